"""Writing service manifests and templates into a temporary services folder for tests."""
import json
import os

TEMPLATE_2 = "Previous summary:\n{}\n\nNew turns:\n{}\n\nSummary:\n"
TEMPLATE_1 = "Turns:\n{}\n\nSummary:\n"


def flavor(name="small", **overrides):
    """A valid flavor entry in manifest form."""
    data = {"name": name, "modelName": "fake-model", "totalContextLength": 4096, "maxGenerationLength": 512,
            "createNewTurnAfter": 150, "summaryTurns": 2, "maxNewTurns": 8, "temperature": 0.0, "top_p": 1.0}
    data.update(overrides)
    return data


def manifest(name="svc", fields=2, flavors=None, **overrides):
    """A valid manifest in seed form."""
    data = {"type": "summary", "fields": fields, "name": name, "description": {"en": "test service"},
            "backend": "vLLM", "flavor": flavors if flavors is not None else [flavor()]}
    data.update(overrides)
    return data


def write_service(folder, stem="svc", data=None, template=None, suffix=".json"):
    """Write <stem>.json (or .yaml) and <stem>.txt into folder; return the manifest path."""
    data = manifest(name=stem) if data is None else data
    if template is None:
        template = TEMPLATE_2 if data.get("fields") == 2 else TEMPLATE_1
    path = os.path.join(folder, stem + suffix)
    with open(path, "w", encoding="utf-8") as handle:
        if suffix == ".json":
            json.dump(data, handle)
        else:
            import yaml
            yaml.safe_dump(data, handle)
    if template is not False:
        with open(os.path.join(folder, stem + ".txt"), "w", encoding="utf-8") as handle:
            handle.write(template)
    return path

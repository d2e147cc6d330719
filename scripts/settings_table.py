"""Print the README's settings table from the Settings object (paste it into README.md)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app.settings import setting_fields  # noqa: E402


def shown(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`" if value != "" else "(empty)"


def main():
    print("| flag | environment variable | default | what it does |")
    print("|---|---|---|---|")
    for f in setting_fields():
        print(f"| `{f.metadata['flag']}` | `{f.metadata['env']}` | {shown(f.default)} | {f.metadata['help']} |")


if __name__ == "__main__":
    main()

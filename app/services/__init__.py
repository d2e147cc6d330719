"""Services: one manifest and template per service, and the watched folder that holds them."""

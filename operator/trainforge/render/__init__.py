"""Pure renderers: validated spec -> child manifests (plain dicts), no I/O."""

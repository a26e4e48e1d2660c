"""ComfyUI node classes (V1 API). Imported as `<pack>.nodes`, never as a top-level `nodes` module."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

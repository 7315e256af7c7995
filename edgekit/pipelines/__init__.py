"""Family-specific jobs; ``edgekit.pipeline.run_recipe`` dispatches to them by ``model.family``."""

"""jaxmodels: readable JAX/Flax models and one shared trainer, sized for a 12 GB GPU."""
__version__ = "0.1.0"

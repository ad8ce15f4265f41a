"""unigrad: every post-training method as one gradient estimator with four interchangeable parts."""
from unigrad.batch import Batch
from unigrad.estimator import Estimator, Output
from unigrad.methods import method, methods
from unigrad.objectives import KLPenalty, Sum, Term

__version__ = "0.1.0"
__all__ = ["Batch", "Estimator", "Output", "Sum", "Term", "KLPenalty", "method", "methods", "__version__"]

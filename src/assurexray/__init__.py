"""AssureXRay: reproducible training, evaluation and explanation of radiograph classifiers.

Research use only: not a medical device, not for clinical use.
"""
__version__ = "0.1.0"

NOT_FOR_CLINICAL_USE = (
    "Research use only. Not a medical device and not for clinical use: "
    "outputs must not inform diagnosis or treatment."
)

"""The learning loop: what turns served predictions and uploads into a better, honest model.

    adapt.py         AdaBN: a copy of the model with BatchNorm statistics of the images at hand
    estimate.py      accuracy without labels (Average Thresholded Confidence, checked by an adapted copy)
    calibration.py   temperature scaling: probabilities that mean what they say
    pseudo_labels.py which unlabeled uploads to train on, and the junk guard
    review.py        the unlabeled uploads a person should label first
    retrain.py       one retrain: pseudo-label, fine-tune, calibrate, judge, and the promotion rule

Layers inside (import-linter checks them): retrain > review, calibration > estimate > adapt, pseudo_labels.
"""

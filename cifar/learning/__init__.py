"""The learning loop: what turns served predictions and uploads into a better, honest model.

    calibration.py   temperature scaling and calibration error: probabilities that mean what they say
    estimate.py      accuracy without labels (Average Thresholded Confidence)
    pseudo_labels.py labels for unlabeled uploads from statistics adapted to them, and the junk guard
    retrain.py       one retrain: pseudo-label, fine-tune, calibrate, judge, and the promotion rule
"""

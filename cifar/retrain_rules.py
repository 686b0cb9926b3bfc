"""What a retrain does and when its result may serve: its settings, the promotion rule, and the
error it gives when the uploads hold nothing to learn. Without the machinery (Keras), so the
serving process, the UI and the Monitoring tab read them without loading TensorFlow."""

RETRAIN = {
    "threshold": 0.98,    # calibrated: labels 98% sure; keeps ~60% of clean images (raw 0.75 kept the same ones)
    "min_fraction": 0.5,  # on shifted images few clear the threshold: still take each class's surest half
    "adapt_min": 200,     # pseudo-label with BatchNorm statistics of the uploads from this many on
    "min_recognised": 0.1,  # below this share of confident labels, unlabeled uploads are junk to the model
    "epochs": 4,          # a few passes: enough to adapt, too few to forget
    "replay": 3000,       # original training images mixed in (3x a full 1,000-image upload)
    "upload_repeats": 1,  # copies of each kept upload in an epoch's training set
    "review_repeats": 1,  # copies of each upload labeled in the Review tab (bench-retrain --review)
    "bias_scaler": 1.0,   # BatchNorm biases at the plain lr: 64x (from scratch) moved clean accuracy most
    "batch_size": 256,    # smaller than from scratch: more steps on few images
    "lr_scale": 0.05,     # a twentieth of the from-scratch lr: 0.1 cost 1-2 clean points (bench-retrain)
    "seconds": 160,       # a whole retrain should end within 3 minutes on any CPU (20 s kept for a noisy
                          # machine): training gets what is left
    "min_train_seconds": 20,  # ...but never less than this
    "hold_back": 0.2,     # of the unlabeled uploads, kept out of training to estimate the new version on
                          # images it did not learn from (only where that is adapt_min or more; a new draw
                          # each retrain, so the next one trains on them)
}

PROMOTION_TOLERANCE = 0.01   # a new version may be at most 1 point worse on the held-out images
PROMOTION_RULE = (f"The new version becomes current only if it scores no more than {PROMOTION_TOLERANCE * 100:g} "
                  "point below the current one on 2,000 held-out test images.")


class NothingToLearn(ValueError):
    """The uploads give the retrain nothing to train on; the message says why and what to do."""

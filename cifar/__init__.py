"""CIFAR-10 classifier: data, preprocessing, model, training, evaluation, registry and Hub."""

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

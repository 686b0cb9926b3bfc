"""Training: the from-scratch recipe, and fine-tuning a version on uploaded images."""
import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from . import CLASSES, cpu, model as net
from .retrain_rules import RETRAIN


def set_precision() -> str:
    """bfloat16 compute with float32 weights where the CPU has it natively (~2x training
    throughput with AVX512-BF16/AMX), float32 where it would be emulated (cifar.cpu)."""
    precision = cpu.precision()
    keras.mixed_precision.set_global_policy(precision)
    return precision


# --- augmentation -------------------------------------------------------------------------

def random_translate(x: np.ndarray, pixels: int, rng: np.random.Generator) -> np.ndarray:
    """Random crops of each image from a `pixels`-wide reflect padding (vectorised by offset)."""
    if pixels == 0:
        return x
    padded = np.pad(x, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)), mode="reflect")
    offsets = rng.integers(0, 2 * pixels + 1, size=(len(x), 2))
    out = np.empty_like(x)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            idx = np.flatnonzero((offsets[:, 0] == dy) & (offsets[:, 1] == dx))
            out[idx] = padded[idx, dy:dy + 32, dx:dx + 32]
    return out


def alternating_flip(x: np.ndarray, epoch: int, flip_mask: np.ndarray) -> np.ndarray:
    """Flip a fixed random half on even epochs and the other half on odd ones (airbench):
    every image is seen both ways within two epochs, unlike independent coin flips."""
    chosen = flip_mask if epoch % 2 == 0 else ~flip_mask
    out = x.copy()
    out[chosen] = out[chosen, :, ::-1]
    return out


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES), dtype=np.float32)[labels]


# --- training loop ------------------------------------------------------------------------

def batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    """(x, y) in order, in batches, as a tf.data pipeline that does not autotune. Keras' own
    pipeline for arrays autotunes, and at the end of each `fit` (one an epoch) tearing it down
    waited for the autotuner: 3 s on 2,048 images natively (AMX), 4 s on 512 and up to 40 s on a
    4,000-image retrain with oneDNN off. Without autotuning: no wait (RESULTS.md, "Retraining")."""

    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).with_options(options).prefetch(1)


@dataclass
class TrainResult:
    model: keras.Model
    history: dict = field(default_factory=dict)
    seconds: float = 0.0
    epochs: int = 0


class _ProgressCallback(keras.callbacks.Callback):
    def __init__(self, total_steps: int, steps_before: int, report, started: float, epoch: int, epochs: int,
                 timebox=None):
        super().__init__()
        self.total, self.before, self.report, self.started = total_steps, steps_before, report, started
        self.epoch, self.epochs, self.timebox = epoch, epochs, timebox

    def on_train_batch_end(self, batch, logs=None):
        done = self.before + batch + 1
        if self.report and (batch % 5 == 0 or done == self.total):
            elapsed = time.time() - self.started
            fraction = min(1.0, self.timebox.progress()) if self.timebox else done / self.total
            left = elapsed / max(fraction, 1e-6) * (1 - fraction)
            self.report(fraction, f"epoch {self.epoch + 1}/{self.epochs}, step {done}/{self.total}, "
                                  f"{elapsed:.0f}s elapsed, ~{left:.0f}s left")


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead: every few steps, every float weight (BatchNorm statistics too) moves to
    its running average and training goes on from there. The average's decay grows as (t/T)^3, so
    early weights are soon forgotten, and after the last step the model holds the average itself.
    Against the optimizer's plain EMA: +0.8 points at 3 epochs (86.00 -> 86.81%), +0.26 at the
    shipped 24 (91.51 -> 91.77%)."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total, self.steps, self.average = total_steps, 0, None
        self.every, self.base, self.power = net.HYP["lookahead"]

    def on_train_begin(self, logs=None):
        if self.average is None:  # fit() calls Keras once an epoch: start the average only once
            self.weights = [w for w in self.model.weights if "float" in str(w.dtype)]
            self.average = [w.numpy() for w in self.weights]

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        last = self.steps >= self.total
        if self.steps % self.every and not last:
            return
        decay = 1.0 if last else self.base ** self.every * (self.steps / self.total) ** self.power
        for weight, average in zip(self.weights, self.average):
            average *= decay
            average += (1 - decay) * weight.numpy()
            weight.assign(average)


class TimeBox(keras.callbacks.Callback):
    """Fine-tuning that fits a time budget on any CPU. The learning rate follows the recipe's
    triangle over progress = max(steps done / steps planned, seconds spent / budget), and
    training ends when progress reaches 1 or the next step would end past the budget: on a fast
    CPU every planned step runs (as without a budget), on a slow one the same schedule is
    compressed into the budget, ending decayed."""

    def __init__(self, total_steps: int, budget_s: float | None, peak_lr: float):
        super().__init__()
        self.total, self.budget = total_steps, budget_s
        # The recipe's triangle with progress (0..1) for the step: one formula for both paths.
        self.schedule = net.TriangleSchedule(peak_lr, 1, *net.HYP["schedule"])
        self.steps, self.started, self.done = 0, None, False
        self.step_began = None

    def progress(self) -> float:
        by_steps = self.steps / self.total
        if not self.budget or self.started is None:
            return by_steps
        return max(by_steps, (time.time() - self.started) / self.budget)

    def learning_rate(self, t: float) -> float:
        return float(self.schedule(t))

    def on_train_begin(self, logs=None):
        if self.started is None:  # fit() calls Keras once an epoch: the clock starts once, tracing included
            self.started = time.time()

    def on_train_batch_begin(self, batch, logs=None):
        self.step_began = time.time()
        self.model.optimizer.learning_rate = self.learning_rate(min(self.progress(), 1.0))

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        now = time.time()
        # Stop when the schedule has run its course in steps, or when one more step as long as
        # the last would end past the budget (a step takes 3-5 s on a slow CPU).
        over_time = self.budget and now - self.started + (now - self.step_began) > self.budget
        if self.progress() >= 1.0 or over_time:
            self.done = self.model.stop_training = True
            self.model.optimizer.learning_rate = self.learning_rate(1.0)


# Images the BatchNorm statistics are re-estimated on, at most: 6 passes of 500 (more changed
# nothing but the time: 20 took 14 s on AMX, 34 s at AVX-512 speed).
REFRESH_BATCHES, REFRESH_BATCH_SIZE = 6, 500


def refresh_images(count: int) -> int:
    """How many images `refresh_batchnorm` passes through the network for a set of `count`."""
    return min(count, REFRESH_BATCHES * REFRESH_BATCH_SIZE)


def refresh_batchnorm(model: keras.Model, x: np.ndarray) -> None:
    """Re-estimate BatchNorm statistics for the final (EMA) weights: forward passes in training
    mode update only the moving averages, never the weights. Each image at most once (a random
    3,000 of a larger set), in chunks of 500 whose statistics are averaged with equal weight
    (momentum k/(k+1) for the k-th): 1,000 uploads cost 1,000 images, not 6 batches of 500."""
    order = np.random.default_rng(0).permutation(len(x))[:refresh_images(len(x))]
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momentum = [layer.momentum for layer in layers]
    try:
        for k, chunk in enumerate(np.array_split(order, math.ceil(len(order) / REFRESH_BATCH_SIZE))):
            for layer in layers:
                layer.momentum = k / (k + 1)  # k=0 replaces the old statistics; then a running mean
            model(x[chunk].astype(np.float32), training=True)
    finally:
        for layer, value in zip(layers, momentum):
            layer.momentum = value


def fit(model: keras.Model, x: np.ndarray, y: np.ndarray, epochs: int, *, seed: int = 0,
        lr_scale: float = 1.0, bias_scaler: float | None = None, batch_size: int | None = None,
        lookahead: bool = False, validation=None, report=None, verbose: int = 0,
        time_budget_s: float | None = None) -> TrainResult:
    """Train `model` in place with the recipe for `epochs` epochs; weights end as their average:
    the lookahead's (from scratch) or the optimizer's EMA with refreshed BatchNorm (fine-tuning).

    `x` is (N, 32, 32, 3) uint8, `y` either labels (N,) or soft targets (N, 10).
    `report(fraction, message)` is called as steps finish. `time_budget_s` (fine-tuning only):
    at most this many seconds of training, the schedule compressed to fit (TimeBox).
    """
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    batch_size = min(batch_size or net.HYP["batch_size"], len(x))
    model.get_layer("whiten").kernel.trainable = False  # not saved with the model: freeze again
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total_steps = steps_per_epoch * epochs
    timebox = TimeBox(total_steps, time_budget_s, net.HYP["lr"] * lr_scale) if not lookahead else None
    model.compile(optimizer=net.make_optimizer(total_steps, lr_scale, bias_scaler, ema=not lookahead,
                                               schedule=timebox is None),
                  loss=net.make_loss(), metrics=["accuracy"], jit_compile=False)
    targets = y if y.ndim == 2 else one_hot(y)
    flip_mask = rng.random(len(x)) < 0.5
    history: dict[str, list] = {}
    val = batches(validation[0], one_hot(validation[1]), batch_size) if validation is not None else None
    recipe_callbacks = [Lookahead(total_steps)] if lookahead else [timebox]
    started = time.time()
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        augmented = random_translate(alternating_flip(x, epoch, flip_mask), net.HYP["translate"], rng)
        callback = _ProgressCallback(total_steps, epoch * steps_per_epoch, report, started, epoch, epochs, timebox)
        h = model.fit(batches(augmented[order], targets[order], batch_size), epochs=epoch + 1, initial_epoch=epoch,
                      shuffle=False,  # shuffled above, with the seed
                      validation_data=val, callbacks=[callback, *recipe_callbacks], verbose=verbose)
        for key, values in h.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        history.setdefault("seconds", []).append(round(time.time() - started, 1))
        if verbose:
            print(f"epoch {epoch + 1}/{epochs} done in {time.time() - started:.0f}s total "
                  f"({', '.join(f'{k}={v[-1]:.4f}' for k, v in history.items() if k != 'seconds')})", flush=True)
        if timebox and timebox.done:
            break
    if timebox:
        history["steps"] = [timebox.steps, total_steps]  # steps run of those planned
    if not lookahead:
        model.optimizer.finalize_variable_values(model.trainable_variables)
        refresh_batchnorm(model, x)
    return TrainResult(model, history, time.time() - started, len(history.get("seconds", [])))


def train_from_scratch(x: np.ndarray, y: np.ndarray, epochs: int | None = None, seed: int = 0,
                       widths=None, validation=None, report=None, verbose: int = 0) -> TrainResult:
    """The shipped recipe: build, whiten-initialise and train a fresh network."""
    set_precision()
    keras.utils.set_random_seed(seed)
    model = net.build_network(widths)
    net.init_whitening(model, x)
    net.init_identity(model)
    return fit(model, x, y, epochs or net.HYP["epochs"], seed=seed, lookahead=True, validation=validation,
               report=report, verbose=verbose)


# --- retraining on uploads ----------------------------------------------------------------



def finetune(model_path, x: np.ndarray, y: np.ndarray, epochs: int | None = None, seed: int = 0,
             report=None, time_budget_s: float | None = None) -> TrainResult:
    """A fresh copy of the model at `model_path`, trained a few epochs on (x, y), EMA weights,
    in at most `time_budget_s` seconds of training (TimeBox) when given."""
    set_precision()
    model = net.load(model_path)
    return fit(model, x, y, epochs or RETRAIN["epochs"], seed=seed, lr_scale=RETRAIN["lr_scale"],
               bias_scaler=RETRAIN["bias_scaler"], batch_size=RETRAIN["batch_size"], report=report,
               time_budget_s=time_budget_s)

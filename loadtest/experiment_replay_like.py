# ruff: noqa  (an experiment kept only in history: RESULTS.md, session 24)
"""Session 24 experiment, not kept: training replay images made to look like the uploads.

Tried for issue #28 (the retrain on CIFAR-10-C-like corruptions) and turned down on the four held-out
corruptions (RESULTS.md, session 24). Each clean labeled replay image is given the uploads' mean power
spectrum per channel (attenuated where the uploads have less power, random-phase noise added where they
have more) and their distribution of per-image channel means; the fine-tune then learns the uploads'
damage under true labels. From the repository root (one network at one view, 6-7 min a corruption):

    PYTHONPATH=. python loadtest/experiment_replay_like.py speckle_noise,gaussian_blur,spatter,saturate base,half,double
"""
import glob
import json
import os
import sys
import time

import numpy as np


def _spectra(x):
    """Mean power spectrum per channel of mean-subtracted images, and channel means."""
    x = x.astype(np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    f = np.fft.fft2(x - mean, axes=(1, 2))
    return (np.abs(f) ** 2).mean(0), mean


def transfer(source, target, rng, shared_noise=False):
    """source, target: (N,32,32,3) uint8. Returns source made to match target's mean power
    spectrum per channel (attenuation where lower, random-phase noise where higher) and its
    distribution of per-image channel means."""
    ps, ms = _spectra(source)
    pt, mt = _spectra(target)
    ratio = pt / np.maximum(ps, 1e-6)
    gain = np.sqrt(np.minimum(ratio, 1.0))
    excess = np.maximum(pt - ps, 0.0)  # power the source lacks: noise
    x = source.astype(np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    f = np.fft.fft2(x - mean, axes=(1, 2)) * gain
    n = len(x)
    shape = (n, 32, 32, 1 if shared_noise else 3)
    white = np.fft.fft2(rng.standard_normal(shape).astype(np.float32), axes=(1, 2))  # unit power per freq = 32*32
    noise = white * np.sqrt(excess / (32 * 32))
    out = np.real(np.fft.ifft2(f + noise, axes=(1, 2)))
    # per-image channel means: match the target's distribution (mean and spread per channel)
    mt_flat, ms_flat = mt.reshape(-1, 3), ms.reshape(-1, 3)
    z = (mean.reshape(-1, 3) - ms_flat.mean(0)) / (ms_flat.std(0) + 1e-6)
    new_mean = z * mt_flat.std(0) + mt_flat.mean(0)
    out = out + new_mean[:, None, None, :]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
from cifar import corruptions, data, model as net, train
from cifar.bench_retrain import split_field
from cifar.learning.adapt import adapted_copy, upload_probabilities
from cifar.learning.pseudo_labels import pseudo_labels
from cifar.predict import Predictor
from cifar.retrain_rules import RETRAIN

LEVEL = 0
path = glob.glob('models/versions/*/model.keras')[0]
T = json.load(open(glob.glob('models/versions/*/calibration.json')[0]))["by_level"]["0"]["temperature"]
x, y = data.load("../shared/cifar10", "test")
up_idx, y_up, ev = split_field(y, 1000)
ev = ev[data.balanced_subset(y[ev], 100, seed=2)]
x_ev, y_ev = x[ev], y[ev]
names = sys.argv[1].split(",")
variants = sys.argv[2].split(",")
sev = int(sys.argv[3]) if len(sys.argv) > 3 else 5
base = Predictor(net.load(path), tta_level=LEVEL)
acc = lambda p, xx, yy: float((p.predict_arrays(xx).argmax(1) == yy).mean())
clean_before = acc(base, x_ev, y_ev)
print("clean before", clean_before, flush=True)
for name in names:
    xu = corruptions.corrupt(x[up_idx], name, sev, seed=1)
    xe = corruptions.corrupt(x_ev, name, sev, seed=2)
    ad = adapted_copy(path, xu)
    probs = upload_probabilities(path, xu, LEVEL, T, adapted=ad)
    lab, keep = pseudo_labels(probs, RETRAIN["threshold"], RETRAIN["min_fraction"], RETRAIN["min_recognised"])
    hb = np.zeros(1000, bool); hb[np.random.default_rng(0).choice(1000, 200, replace=False)] = True
    keep &= ~hb
    before = acc(base, xe, y_ev)
    ad_acc = acc(Predictor(ad, tta_level=LEVEL), xe, y_ev)
    print(f"{name} s{sev}: before {before:.3f} adapted {ad_acc:.3f} pseudo kept {keep.sum()} acc {(lab[keep]==y_up[keep]).mean() if keep.any() else 0:.3f}", flush=True)
    for v in variants:
        xr, yr = data.replay(3000, seed=0)
        rng = np.random.default_rng(0)
        if v == "base":
            xt, yt = xr, yr
        elif v == "half":
            k = len(xr) // 2
            xt = np.concatenate([xr[:k], transfer(xr[k:], xu, rng)]); yt = yr
        elif v == "double":
            xt = np.concatenate([xr, transfer(xr, xu, rng)]); yt = np.concatenate([yr, yr])
        elif v == "sharednoise":
            k = len(xr) // 2
            xt = np.concatenate([xr[:k], transfer(xr[k:], xu, rng, shared_noise=True)]); yt = yr
        xtr = np.concatenate([xu[keep], xt]); ytr = np.concatenate([lab[keep], yt])
        t = time.time()
        r = train.finetune(path, xtr, ytr)
        secs = time.time() - t
        p = Predictor(r.model, tta_level=LEVEL)
        print(f"  {v}: after {acc(p, xe, y_ev):.3f} clean {acc(p, x_ev, y_ev):.3f} train {secs:.0f}s n={len(xtr)}", flush=True)

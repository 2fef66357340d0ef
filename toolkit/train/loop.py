"""Train :class:`runtime.neural.model.LipSyncUNet` on one package and store the weights in it.

``lipsync-pack train PACKAGE --size small --minutes 15`` (or :func:`train`):

1. **Data.** :class:`toolkit.train.dataset.PackageDataset`: training frames only,
   the target with a like-shaped training frame's lower face transplanted on
   as the reference (``reference`` "retrieval", the default; "base": a random
   other training frame), batches a pure function of ``(seed, step)``.
2. **Loss.** L1 over the image plus ``ssim_weight`` x (1 - SSIM) / 2 over the
   mask box, both weighted per pixel by ``1 + mouth_weight`` on the dilated lip
   hull and 1 elsewhere, so the few hundred mouth pixels are not drowned by the
   face the skip connections copy. With ``landmark_weight`` (``--landmark-loss``),
   plus that times the landmark error a frozen reader sees in the generated
   mouth (:mod:`toolkit.train.reader`).
3. **Optimiser.** AdamW at a constant learning rate (the step count is not known
   in advance: the budget is wall-clock minutes).
4. **Choosing the weights.** With ``validation`` (20 % by default), the last
   share of the training frames is held back from everything the run fits and,
   at step 0 and every checkpoint, the network renders it as the server would
   and the landmark backend measures its lip sync (:mod:`toolkit.train.validate`).
   The best check's weights are published; training stops once ``patience``
   checks in a row have not beaten it.
5. **Stopping.** Also at ``minutes`` of training time or ``max_steps`` steps,
   both counted over all runs of one checkpoint (checks included), so an
   interrupted 15-minute run resumed with ``--resume`` trains 15 minutes in all.
6. **Checkpoints.** Every ``checkpoint_every`` steps and at the end, in the
   package's hidden ``.train/`` folder (hidden names are not part of a package):
   ``checkpoint.safetensors`` holds the model, the best check's model and AdamW's
   moment tensors, ``checkpoint.json`` the step, seconds, losses, checks, configs and optimiser
   hyper-parameters, and the sha256 of the tensors file it belongs with. No
   pickle. No random-generator state is needed: initialisation depends on the
   seed only, batches on ``(seed, step)`` only, so a resumed run continues
   exactly as an uninterrupted one would (with ``num_workers`` 0 or more).
7. **Publishing.** :func:`toolkit.writer.add_file` writes the weights to
   ``PACKAGE/neural.safetensors`` (temporary name, then rename), then rewrites
   ``manifest.json`` the same way with the file in ``files`` and the model's
   description in ``extra.neural``. A reader
   that opens the package between the two renames sees new weights under an old
   checksum and fails ``verify`` until the manifest lands a moment later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch.utils.data import DataLoader
from tqdm import tqdm

from runtime import cliutil
from runtime.errors import InputError, LipsyncError, PackageError
from runtime.files import write_atomic
from runtime.mouth import MOUTH_FILE, for_package
from runtime.neural.model import REFERENCES, SIZES, LipSyncUNet, ModelConfig, prepare_inputs, weights_bytes
from runtime.package import Package, sha256_file
from runtime.package import NEURAL_WEIGHTS as WEIGHTS  # in the package, listed in manifest files
from toolkit.faces import create as create_backend
from toolkit.writer import add_file

from .dataset import PackageDataset, collate, step_batches, training_frames
from .mouth import refit as refit_mouth
from .reader import Reader, fit_reader
from .validate import MIN_SECONDS, SHARE, Selection, Validator, split

log = logging.getLogger(__name__)

CHECKPOINT_DIR = ".train"               # hidden: never part of the package
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
SSIM_WINDOW = 7                         # px, uniform window (as in the SSIM of many GAN repos)
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # the SSIM paper's constants for a [0, 1] range
FINAL_LOSS_STEPS = 20                   # final_loss: mean over the last 20 steps, not one noisy batch


@dataclass(frozen=True)
class TrainConfig:
    size: str = "small"             # runtime.neural.model.SIZES key: tiny (tests), small (CPU), full (GPU)
    device: str = "cpu"             # torch device
    batch: int = 8                  # examples per step; 8 keeps a small step near 0.35 s on 2 cores
    lr: float = 1e-3                # AdamW, constant
    weight_decay: float = 1e-4      # AdamW's decoupled decay; small, the data is one speaker
    minutes: float = 15.0           # training wall-clock budget over all runs of a checkpoint
    max_steps: int | None = None    # also stop at this total step count (None: the budget alone)
    seed: int = 0                   # initialisation and every batch; equal seeds, equal runs
    checkpoint_every: int = 200     # steps between checkpoints (~70 s for small on 2 cores)
    mouth_weight: float = 4.0       # extra loss weight on the lip hull: weight there is 1 + this
    ssim_weight: float = 0.5        # weight of (1 - SSIM) / 2 next to L1
    augment: bool = True            # shift crops within the package's 4 px margin
    num_workers: int = 0            # DataLoader processes; reading crops is cheap next to a step
    threads: int = 0                # torch CPU threads; 0: every core this process may use
    shape: bool = True              # condition on the mouth-shape model's prediction (runtime.mouth)
    landmark_weight: float = 0.0    # landmark loss (toolkit.train.reader): weight of the lip points' error, px^2
    reference: str = "retrieval"    # the network's reference crop: runtime.neural.model.REFERENCES
    validation: float = SHARE       # share of the training frames held back to choose the weights (0: off)
    patience: int = 6               # stop after this many checks (one per checkpoint) without a better one


@dataclass
class TrainResult:
    """What :func:`train` did; ``seconds`` and ``steps`` count every run of the checkpoint."""

    weights: Path
    sha256: str
    steps: int
    seconds: float
    final_loss: float                       # mean of the last FINAL_LOSS_STEPS step losses
    ms_per_step: float                      # this run's wall time per step (nan if it took none)
    losses: list = field(default_factory=list, repr=False)
    validation: dict | None = None          # the held-back checks (validate.Selection.to_json), None when off


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of two (B, C, H, W) images in [0, 1] over a uniform window: (B, C, H, W)."""
    def mean(t):
        return F.avg_pool2d(t, SSIM_WINDOW, 1, SSIM_WINDOW // 2, count_include_pad=False)
    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx * mx, mean(y * y) - my * my, mean(x * y) - mx * my
    return (2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2) / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))


def lipsync_loss(pred: torch.Tensor, target: torch.Tensor, mouth: torch.Tensor, config: TrainConfig,
                 box: tuple) -> torch.Tensor:
    """Mouth-weighted L1 over the image + (1 - SSIM) / 2 over the mask box.

    SSIM is computed only in the mask box, widened by half a window (outside it the
    output is a copy of the input and is never pasted back): 5x cheaper than over
    the whole image, where it took a quarter of a training step.

    Parameters
    ----------
    pred, target : torch.Tensor [shape=(B, 3, px, px), in [0, 1]]
    mouth : torch.Tensor [shape=(B, px, px)], 1 on the dilated lip hull
    box : (x0, y0, x1, y1), the mask box in model pixels
    """
    w = (1 + config.mouth_weight * mouth)[:, None]                 # (B, 1, px, px)
    l1 = (w * (pred - target).abs()).sum() / (w.sum() * pred.shape[1])
    pad, side = SSIM_WINDOW // 2, pred.shape[-1]
    xs = slice(max(box[0] - pad, 0), min(box[2] + pad, side))
    ys = slice(max(box[1] - pad, 0), min(box[3] + pad, side))
    wb = w[:, :, ys, xs]                                            # (B, 1, h, w)
    ssim = ssim_map(pred[:, :, ys, xs].contiguous(), target[:, :, ys, xs].contiguous())
    dssim = (wb * (1 - ssim) / 2).sum() / (wb.sum() * pred.shape[1])
    return l1 + config.ssim_weight * dssim


def save_checkpoint(folder: Path, model: LipSyncUNet, opt: torch.optim.Optimizer, state: dict,
                    cfg: ModelConfig, config: TrainConfig, reader: Reader | None = None,
                    selection: Selection | None = None) -> None:
    """Model, AdamW, landmark-reader and best-check tensors to safetensors, everything else to JSON; both
    written atomically."""
    folder.mkdir(exist_ok=True)
    opt_state = opt.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if reader is not None:
        tensors.update({f"reader.{k}": v.detach().cpu().contiguous() for k, v in reader.tensors().items()})
    if selection is not None:
        tensors.update(selection.tensors())
    for pid, slots in opt_state["state"].items():
        tensors.update({f"optim.{pid}.{k}": torch.as_tensor(v).detach().cpu().contiguous()
                        for k, v in slots.items()})
    data = safetensors_bytes(tensors)
    write_atomic(folder / CHECKPOINT, data)
    meta = dict(state, model_config=json.loads(cfg.to_json()), train_config=asdict(config),
                validation=selection.to_json() if selection is not None else None,
                param_groups=opt_state["param_groups"], tensors_sha256=sha256_file(folder / CHECKPOINT))
    write_atomic(folder / CHECKPOINT_META, (json.dumps(meta) + "\n").encode())


def load_checkpoint(folder: Path, model: LipSyncUNet, opt: torch.optim.Optimizer, cfg: ModelConfig) -> dict:
    """Restore model and optimiser in place; return the ``step``, ``seconds``, ``losses`` state, under
    ``reader`` the landmark reader's tensors and info when the run had one (else None), under
    ``validation`` the checks' record (JSON, else None) and under ``checks`` that record with the best
    check's tensors, for :meth:`Selection.from_checkpoint` (else None)."""
    tensor_path, meta_path = folder / CHECKPOINT, folder / CHECKPOINT_META
    if not meta_path.is_file() or not tensor_path.is_file():
        raise InputError(f"{folder}: no checkpoint to resume from; train without --resume first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["tensors_sha256"] != sha256_file(tensor_path):
            raise ValueError(f"{CHECKPOINT} does not belong with {CHECKPOINT_META}")
        saved = ModelConfig.from_json(json.dumps(meta["model_config"]))
        if saved != cfg:
            if saved.size != cfg.size:
                fix = f"pass --size {saved.size}"
            elif saved.shape_dim != cfg.shape_dim:
                fix = f"pass {'--shape' if saved.shape_dim else '--no-shape'}"
            elif saved.reference != cfg.reference:
                fix = f"pass --reference {saved.reference}"
            else:
                fix = "the package's mouth-shape model changed since; train afresh"
            describe = lambda c: (f"{c.size}, shape conditioning {'on' if c.shape_dim else 'off'}, "
                                  f"{c.reference} reference")
            raise InputError(f"{folder}: the checkpoint's model ({describe(saved)}) differs from this run's "
                             f"({describe(cfg)}); {fix} or drop --resume")
        with safe_open(str(tensor_path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        slots: dict = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                slots.setdefault(int(pid), {})[name] = value
        groups = [dict(g, betas=tuple(g["betas"])) for g in meta["param_groups"]]
        opt.load_state_dict({"state": slots, "param_groups": groups})
        reader = {k[7:]: v for k, v in tensors.items() if k.startswith("reader.")}
        reader = (reader, dict(meta["reader"])) if reader and meta.get("reader") else None
        checks = (meta["validation"], {k: v for k, v in tensors.items() if k.startswith("best")}
                  ) if meta.get("validation") else None
    except (KeyError, ValueError, TypeError, RuntimeError, SafetensorError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise PackageError(f"{folder}: unusable checkpoint ({reason}); train without --resume") from None
    return {"step": int(meta["step"]), "seconds": float(meta["seconds"]), "losses": list(meta["losses"]),
            "reader": reader, "validation": meta.get("validation"), "checks": checks}


def _checkpoint_validation(folder: Path) -> float | None:
    """The validation share a checkpoint was trained with (0 before the option existed); None when its
    JSON cannot be read (:func:`load_checkpoint` then says why)."""
    try:
        meta = json.loads((folder / CHECKPOINT_META).read_text(encoding="utf-8"))
        return float(meta["train_config"].get("validation", 0.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def publish(root: Path, model: LipSyncUNet, cfg: ModelConfig, config: TrainConfig, state: dict) -> tuple:
    """Write ``neural.safetensors`` into the package and record it in the manifest; (path, sha256)."""
    final_loss = float(np.mean(state["losses"][-FINAL_LOSS_STEPS:])) if state["losses"] else float("nan")
    data = weights_bytes(model, cfg, metadata={"steps": state["step"], "final_loss": f"{final_loss:.6f}"})
    digest = hashlib.sha256(data).hexdigest()
    add_file(root, WEIGHTS, data, "neural", {
        "file": WEIGHTS, "sha256": digest, "config": json.loads(cfg.to_json()),
        "train": asdict(config), "steps": state["step"], "seconds": round(state["seconds"], 2),
        "final_loss": round(final_loss, 6) if math.isfinite(final_loss) else None,
        "trained": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **({"landmark_reader": state["reader"]} if state.get("reader") else {}),
        **({"validation": state["validation"]} if state.get("validation") else {}),
    })
    return root / WEIGHTS, digest


def shape_config(cfg: ModelConfig, shape_model, package: Package) -> ModelConfig:
    """``cfg`` conditioned on the package's mouth-shape model: its K coefficients, scaled by their spread
    over the training frames' predictions."""
    from runtime.stream import window_features

    frames = package.usable_train_frames
    pred = shape_model.predict(window_features(np.asarray(package.mel), frames, package.fps), restore=False)
    scale = tuple(round(float(v), 6) for v in np.maximum(pred.std(0), 1e-3))
    return replace(cfg, shape_dim=len(scale), shape_scale=scale)


def train(package_path: str | Path, config: TrainConfig = TrainConfig(), resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train on a package's training frames and store the weights in the package.

    Parameters
    ----------
    package_path : path of a package folder (written to: weights, manifest, ``.train/``)
    config : TrainConfig
    resume : bool
        Continue from ``PACKAGE/.train``'s checkpoint (its model size must match).
    progress : bool
        Show a tqdm bar with the loss and the time left of the budget.

    Raises
    ------
    InputError
        Unknown size, too few training frames, or nothing to resume.
    PackageError
        The package or the checkpoint is unreadable.
    """
    root = Path(package_path)
    package = Package.open(root)
    if config.size not in SIZES:
        raise InputError(f"size {config.size!r}: expected one of {', '.join(sorted(SIZES))}")
    if config.reference not in REFERENCES:
        raise InputError(f"reference {config.reference!r}: expected one of {', '.join(sorted(REFERENCES))}")
    if not 0 <= config.validation < 1:
        raise InputError(f"validation {config.validation}: expected a share from 0 (off) to below 1")
    if resume:
        saved = _checkpoint_validation(root / CHECKPOINT_DIR)
        if saved is not None and saved != config.validation:
            raise InputError(f"{root / CHECKPOINT_DIR}: the checkpoint held back {saved:g} of the training frames "
                             f"for validation; pass --validation {saved:g} or drop --resume")
    refit_mouth(root)                   # the package's mouth-shape model follows its current frames
    package = Package.open(root)
    held = split(package, config.validation, training_frames(package))
    view = held[0] if held else package     # what this run trains on: without the validation block
    shape_model = for_package(view)
    cfg, device = replace(SIZES[config.size], reference=config.reference), torch.device(config.device)
    if config.shape:
        cfg = shape_config(cfg, shape_model, view)
    torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(config.seed)
    model = LipSyncUNet(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = {"step": 0, "seconds": 0.0, "losses": [], "reader": None, "validation": None}
    checks = None                       # a resumed run's record of checks and best weights
    if resume:
        state = load_checkpoint(root / CHECKPOINT_DIR, model, opt, cfg)
        checks = state.pop("checks")
        for group in opt.param_groups:          # this run's hyper-parameters win
            group.update(lr=config.lr, weight_decay=config.weight_decay)
    data = PackageDataset(view, cfg, augment=config.augment, seed=config.seed)
    reader, true_coef = None, None
    if config.landmark_weight > 0:
        if state["reader"] is not None:                 # the resumed run's reader, exactly
            tensors, info = state["reader"]
            reader = Reader.from_tensors(tensors, len(shape_model.bias), info, device)
        else:
            if progress:
                tqdm.write("fitting the landmark loss's mouth reader ...", file=sys.stderr)
            reader = fit_reader(data, shape_model, cfg, seed=config.seed, device=device)
        state["reader"] = reader.info
        true_coef = torch.from_numpy(shape_model.coefficients(np.asarray(package.landmarks))).to(device)
    elif state["reader"] is not None:
        raise InputError(f"{root / CHECKPOINT_DIR}: the checkpoint was trained with a landmark loss; "
                         "pass --landmark-loss again or drop --resume")
    validator, selection = None, None
    if held:
        log.info("holding back %d training frames (%.1f s) to choose the weights by lip sync",
                 len(held[1]), len(held[1]) / package.fps)
        validator = Validator(view, held[1], create_backend("dlib"), device)
        if checks:
            selection = Selection.from_checkpoint(*checks)
        else:
            selection = Selection(config.validation, len(held[1]), config.patience, [])
            _check(selection, validator, model, cfg, state["step"], progress)
        selection.patience = config.patience
    elif config.validation:
        log.warning("%s: too few training frames to hold back %g of them for validation (the block would last "
                    "under %g s, too short to tell weights apart): training on all of them and keeping the last "
                    "weights", root, config.validation, MIN_SECONDS)
    loader = DataLoader(data, batch_sampler=step_batches(len(data), config.batch, config.seed, state["step"]),
                        num_workers=config.num_workers, collate_fn=collate)
    max_steps = math.inf if config.max_steps is None else config.max_steps
    budget, first_step, seconds_before = config.minutes * 60, state["step"], state["seconds"]
    bar = tqdm(total=None if max_steps == math.inf else max_steps, initial=first_step, unit="step",
               disable=not progress, dynamic_ncols=True, desc=f"train {cfg.size}")
    model.train()
    batches, start, smooth = iter(loader), time.perf_counter(), None

    def elapsed() -> float:             # training seconds over all runs, the checks after step 0 included
        return seconds_before + time.perf_counter() - start

    while state["step"] < max_steps and state["seconds"] < budget and not (selection and selection.stop):
        batch = next(batches)
        images, mel, target = prepare_inputs(batch["reference"].to(device), batch["target"].to(device),
                                             batch["mel"].to(device), cfg)
        shape = None
        if cfg.shape_dim:
            shape = torch.from_numpy(shape_model.predict(batch["mel"].numpy(), restore=False)).to(device)
        pred = model(images, mel, shape)
        loss = lipsync_loss(pred, target, batch["mouth"].to(device), config, cfg.mask_box(cfg.px))
        if reader is not None:
            loss = loss + config.landmark_weight * reader.loss(pred, true_coef[batch["frame"].to(device)], cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.detach().item()
        state["losses"].append(value)
        state["step"] += 1
        if state["step"] % config.checkpoint_every == 0:
            if selection is not None:
                _check(selection, validator, model, cfg, state["step"], progress)
                state["validation"] = selection.to_json()
            save_checkpoint(root / CHECKPOINT_DIR, model, opt, dict(state, seconds=elapsed()), cfg, config, reader,
                            selection)
        state["seconds"] = elapsed()
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        per_step = (time.perf_counter() - start) / (state["step"] - first_step)
        left = min(max_steps - state["step"], max(budget - state["seconds"], 0) / per_step)
        bar.total = state["step"] + math.ceil(left)             # tqdm's ETA then is the budget's
        bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
        bar.update(1)
    bar.close()
    ran = state["step"] - first_step
    ms_per_step = (time.perf_counter() - start) / ran * 1e3 if ran else float("nan")
    if selection is not None and selection.history[-1]["step"] != state["step"]:
        _check(selection, validator, model, cfg, state["step"], progress)       # the last weights too
    if selection is not None:
        state["validation"] = selection.to_json()
        state["seconds"] = elapsed()
    save_checkpoint(root / CHECKPOINT_DIR, model, opt, state, cfg, config, reader, selection)
    if selection is not None:
        model.load_state_dict(selection.weights)           # publish the best check's weights
    path, digest = publish(root, model.eval(), cfg, config, state)
    final = float(np.mean(state["losses"][-FINAL_LOSS_STEPS:])) if state["losses"] else float("nan")
    return TrainResult(weights=path, sha256=digest, steps=state["step"], seconds=state["seconds"],
                       final_loss=final, ms_per_step=ms_per_step, losses=state["losses"],
                       validation=state["validation"])


def _check(selection: Selection, validator: Validator, model: LipSyncUNet, cfg: ModelConfig, step: int,
           progress: bool) -> None:
    """Score the weights on the validation block, keep them if they clearly beat the best so far without
    closing the mouth (:meth:`Selection.add`), and say so."""
    best = selection.best
    score = validator.score(model, cfg, step)
    result = selection.add(score, model, validator)
    say = partial(tqdm.write, file=sys.stderr) if progress else log.info
    verdict = ("" if best is None else
               f"; beats step {best['step']} (r {best['opening_r']:.3f}) in {result.wins:.1%} of resamples: "
               + result.reason())
    say(f"step {step}: held-back opening r {score.opening_r:.3f}, LMD {score.lmd_px:.2f} px, articulation "
        f"{score.articulation:.2f}, checked in {score.seconds:.1f} s{verdict}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})   # variables: LIPSYNC_PACK_TRAIN_*
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--size", type=click.Choice(sorted(SIZES)), default="small", show_default=True,
              help="Model size: small trains on a CPU, full wants a GPU, tiny is for tests.")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda).")
@click.option("--batch", type=int, default=8, show_default=True, help="Examples per step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--minutes", type=float, default=15.0, show_default=True,
              help="Training time budget, counted over resumed runs too.")
@click.option("--max-steps", type=int, default=None, help="Also stop at this many steps in all.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation and batches.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Steps between checkpoints.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--resume", is_flag=True, help="Continue from PACKAGE/.train's checkpoint.")
@click.option("--shape/--no-shape", default=True, show_default=True,
              help="Condition the network on the mouth shape the package's mouth model predicts from the audio.")
@click.option("--landmark-loss", "landmark_loss", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of the landmark loss: a reader fitted on the package's frames reads the lip points off "
                   "each generated mouth, and their squared error (px^2) joins the loss. 0: off.")
@click.option("--reference", type=click.Choice(sorted(REFERENCES)), default="retrieval", show_default=True,
              help="The network's reference image. retrieval: the retrieval tier's output, which the network "
                   "learns to change (it starts as retrieval). base: the frame itself (a random other frame in "
                   "training), so the mouth comes from the audio alone.")
@click.option("--validation", type=click.FloatRange(0, 1, max_open=True), default=SHARE, show_default=True,
              help="Share of the training frames (the last ones) held back: at each checkpoint the network's "
                   "mouths on that audio are measured, the weights kept are those that clearly follow it best, "
                   "and training stops when none does any more. 0: off, train on every frame and keep the last "
                   "weights.")
@click.option("--patience", type=click.IntRange(min=1), default=6, show_default=True,
              help="With --validation: stop after this many checks (one per checkpoint) in a row that do not "
                   "clearly beat the best.")
@click.option("--mouth-only", is_flag=True,
              help="Only refit the mouth-shape model (seconds; upgrades a package built before format 1.1).")
@cliutil.logging_options("No progress bar; warnings and errors only.")
def main(package, size, device, batch, lr, minutes, max_steps, seed, checkpoint_every, workers, resume, shape,
         landmark_loss, reference, validation, patience, mouth_only, quiet, log_level):
    """Train the neural generator on PACKAGE and store neural.safetensors in it.

    The package's mouth-shape model (mouth.safetensors) is refitted first.
    """
    cliutil.setup_logging(log_level, quiet)
    if mouth_only:
        try:
            model = refit_mouth(package)
        except LipsyncError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        click.echo(f"{Path(package) / MOUTH_FILE}: fitted on {model.info['frames']} frames in "
                   f"{model.info['seconds']:.2f} s, cross-validated opening r = {model.info['cv_opening_r']:.2f}")
        return
    try:
        config = TrainConfig(size=size, device=device, batch=batch, lr=lr, minutes=minutes, max_steps=max_steps,
                             seed=seed, checkpoint_every=checkpoint_every, num_workers=workers, shape=shape,
                             landmark_weight=landmark_loss, reference=reference, validation=validation,
                             patience=patience)
        result = train(package, config, resume=resume, progress=not quiet and sys.stderr.isatty())
    except LipsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    click.echo(f"{result.weights}: {result.steps} steps, {result.seconds:.0f} s, final loss {result.final_loss:.4f},"
               f" {result.ms_per_step:.0f} ms/step")
    if result.validation:
        v, first = result.validation, result.validation["history"][0]
        best, why = v["best"], ("stopped early: " if v["since_best"] >= v["patience"] else "")
        click.echo(f"{why}kept the weights of step {best['step']}: on {v['frames']} held-back frames their mouth "
                   f"opening follows the real one at r {best['opening_r']:.3f} (step {first['step']}: "
                   f"{first['opening_r']:.3f}), LMD {best['lmd_px']:.2f} px")
        if best["step"] == first["step"] and reference == "retrieval" and first["step"] == 0:
            click.echo("note: the network never beat the retrieval tier it starts from; `lipsync-serve --generator "
                       "retrieval,static` serves the same mouths at a quarter of the cost", err=True)


if __name__ == "__main__":
    main()

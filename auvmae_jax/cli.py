"""`auvmae <command>`: the command-line entry point.

Training commands take `--config=configs/FILE.py[:ARG]`, `--config.KEY=VALUE`
overrides and `--workdir=DIR`.
"""

from __future__ import annotations

import logging
import os
import re
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from auvmae_jax.errors import Preempted, UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py:B", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and pictures.")
flags.DEFINE_string("split", None, "evaluate: the split to score (default: the workdir's test fold).")
flags.DEFINE_bool("ablation", False, "crossval: run the four loss rows of Table 3.")
flags.DEFINE_string("pair", None, "priors: the AU pair of the inter-frame figure, e.g. 6,12.")
flags.DEFINE_string("dataset", None, "build-data: disfa, disfa/right, bp4d or face_videos/CORPUS.")
flags.DEFINE_string("manual_dir", None, "build-data: the dataset's folders as its owners ship them.")
flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "build-data: where the built records go.")
flags.DEFINE_integer("clip_length", None, "build-data: frames per clip (default: 128; face videos 64).")
flags.DEFINE_integer("clip_stride", None, "build-data: frames between clip starts (default: clip length).")
flags.DEFINE_integer("image_size", 224, "build-data: side of the face crops; convert: the source's.")
flags.DEFINE_bool("detect", True, "build-data, features, predict: detect, crop faces (--no-detect: crops).")
flags.DEFINE_bool("align", True, "build-data, features, predict: rotate crops, eyes level (--no-align).")
flags.DEFINE_integer("workers", 1, "build-data: local processes preparing videos.")
flags.DEFINE_string("beam_pipeline_options", "", "build-data: run on Apache Beam, e.g. runner=DirectRunner.")
flags.DEFINE_string("checkpoint", None, "features, predict: a training workdir or a converted dir.")
flags.DEFINE_string("video", None, "features, predict: a video file (features also: .npy frames [T,H,W,3]).")
flags.DEFINE_string("output", None, "convert: the new checkpoint dir; features: FEATS.npy; "
                    "predict: the CSV (default: VIDEO_aus.csv beside the video).")
flags.DEFINE_string("plot", None, "predict: a PNG of the AU probabilities over time.")
flags.DEFINE_enum("pool", "frame", ["frame", "clip"], "features: one vector per frame or per clip.")
flags.DEFINE_string("detector", "opencv", "features, predict: face detector, opencv or mtcnn.")
flags.DEFINE_integer("batch_size", 4, "features, predict: clips per model call.")
flags.DEFINE_integer("hop", None, "features, predict: frames between clip starts (default: half a clip; "
                     "at most a clip, except for features --pool=clip).")
flags.DEFINE_string("source", None, "convert: a PyTorch VideoMAE checkpoint file or a transformers dir.")
flags.DEFINE_bool("trust-pickle", False, "convert: unpickle a .pth/.bin fully (runs code in the file).")
flags.DEFINE_integer("heads", None, "convert: encoder heads, where the source does not say.")
flags.DEFINE_integer("dec_heads", None, "convert: decoder heads, where the source does not say.")
flags.DEFINE_integer("num_frames", None, "convert: frames per clip of the source, where it does not say.")

USAGE = """usage: auvmae COMMAND [--flags]

commands:
  demo       the whole method on built-in synthetic face videos (pre-train, fine-tune, evaluate)
             [--workdir=auvmae_demo --config=configs/demo.py --config.pretrain.num_train_steps=N ...]
  pretrain   VideoMAE pre-training: --config=configs/pretrain.py[:PRESET] --workdir=DIR
  finetune   AU fine-tuning: --config=configs/finetune.py:DATASET,LEVEL,FOLD --workdir=DIR
  evaluate   score a fine-tuned workdir on its test fold: --workdir=DIR [--split=SPLIT]
  crossval   3-fold cross-validation: --config=configs/finetune.py:... --workdir=DIR [--ablation]
  priors     AU-pair priors and heat maps: --config=configs/finetune.py:... --workdir=DIR [--pair=6,12]
             (a fine-tuning workdir alone: its config, and its model's learned matrices beside)
  build-data a real dataset into ArrayRecord clips: --dataset=disfa --manual_dir=DIR --data_dir=DIR
             [--clip_length=128 --clip_stride=N --image_size=224 --no-detect --no-align --workers=N
              --beam_pipeline_options=runner=DirectRunner,...]
  convert    PyTorch VideoMAE weights to a checkpoint dir: --source=FILE_OR_HF_DIR --output=DIR
             [--trust-pickle --heads=N --dec_heads=N --num_frames=N --image_size=N]
  features   encoder features of a video: --checkpoint=DIR --video=FILE|FRAMES.npy --output=FEATS.npy
             [--pool=clip --no-detect --no-align --detector=mtcnn]
  predict    AUs in every frame of a video: --checkpoint=DIR --video=FILE
             [--output=CSV (default: VIDEO_aus.csv beside the video) --plot=aus.png
              --no-detect --no-align --detector=mtcnn --batch_size=4 --hop=N (at most a clip)]

`auvmae COMMAND --help` lists the flags."""


def _demo() -> None:
    from auvmae_jax import demo

    config = FLAGS.config  # configs/demo.py unless --config names another file (main)
    missing = [k for k in ("pretrain", "finetune") if k not in config]
    if missing:
        raise UserError(f"config {config_flags.get_config_filename(FLAGS['config'])}: no "
                        f"{' or '.join(missing)} section; demo takes a file like configs/demo.py "
                        "(a pre-training and a fine-tuning config)")
    demo.run(FLAGS.workdir or "auvmae_demo", config)


def _demo_config_path() -> str:
    """configs/demo.py of the installed package: the demo's config when no --config is given."""
    import configs

    return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), "demo.py")


def _pretrain() -> None:
    from auvmae_jax import pretrain

    config, workdir = _require_config_and_workdir()
    pretrain.train(config, workdir)


def _finetune() -> None:
    from auvmae_jax import evaluation, finetune

    config, workdir = _require_config_and_workdir()
    finetune.train(config, workdir)
    evaluation.evaluate_workdir(workdir)


def _evaluate() -> None:
    from auvmae_jax import evaluation

    if not FLAGS.workdir:
        raise UserError("--workdir is required")
    evaluation.evaluate_workdir(FLAGS.workdir, FLAGS.split)


def _crossval() -> None:
    from auvmae_jax import crossval

    config, workdir = _require_config_and_workdir()
    (crossval.run_ablation if FLAGS.ablation else crossval.run_folds)(config, workdir)


def _priors() -> None:
    from auvmae_jax import evaluation, figures

    if FLAGS.config is None and FLAGS.workdir:  # a fine-tuning workdir carries its config
        config, workdir = evaluation.load_config(FLAGS.workdir), FLAGS.workdir
        if config.get("task") != "finetune":
            raise UserError(f"{workdir} is a {config.get('task', 'non-fine-tuning')} workdir: priors reads a "
                            "fine-tuning workdir, or takes --config=configs/finetune.py:DATASET,LEVEL,FOLD")
    else:
        config, workdir = _require_config_and_workdir()
    pair = None
    if FLAGS.pair:
        try:
            pair = tuple(int(a) for a in FLAGS.pair.split(","))
            assert len(pair) == 2
        except (ValueError, AssertionError) as e:
            raise UserError(f"--pair={FLAGS.pair}: expected two AU numbers, e.g. --pair=6,12") from e
    figures.priors_report(config, workdir, pair)


def _build_data() -> None:
    from auvmae_jax import build_data

    if not FLAGS.dataset or not FLAGS.manual_dir:
        raise UserError("--dataset and --manual_dir are required, e.g. --dataset=disfa --manual_dir=~/DISFA")
    build_data.build(FLAGS.dataset, FLAGS.manual_dir, FLAGS.data_dir, workers=FLAGS.workers,
                     beam_pipeline_options=FLAGS.beam_pipeline_options, clip_length=FLAGS.clip_length,
                     clip_stride=FLAGS.clip_stride, image_size=FLAGS.image_size, detect=FLAGS.detect,
                     align=FLAGS.align)


def _convert() -> None:
    from auvmae_jax import convert

    if not FLAGS.source or not FLAGS.output:
        raise UserError("convert needs --source=FILE_OR_DIR and --output=DIR")
    overrides = dict(heads=FLAGS.heads, dec_heads=FLAGS.dec_heads, num_frames=FLAGS.num_frames,
                     image_size=FLAGS.image_size if FLAGS["image_size"].present else None)
    config = convert.convert(FLAGS.source, FLAGS.output, FLAGS["trust-pickle"].value, overrides)
    print(convert.describe(config))
    print(f"wrote {FLAGS.output}: use --config.init_from={FLAGS.output} or --checkpoint={FLAGS.output}")


def _clip_flags() -> None:
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size={FLAGS.batch_size}: must be at least 1")
    if FLAGS.hop is not None and FLAGS.hop < 1:
        raise UserError(f"--hop={FLAGS.hop}: must be at least 1 frame")


def _features() -> None:
    from auvmae_jax import features

    if not (FLAGS.checkpoint and FLAGS.video and FLAGS.output):
        raise UserError("features needs --checkpoint=DIR --video=FILE --output=FEATS.npy")
    _clip_flags()
    ckpt = features.load_checkpoint(FLAGS.checkpoint)
    features.extract_features(ckpt, FLAGS.video, FLAGS.output, pool=FLAGS.pool, detect=FLAGS.detect,
                              detector=FLAGS.detector, batch_size=FLAGS.batch_size, hop=FLAGS.hop,
                              align=FLAGS.align)


def _predict() -> None:
    from auvmae_jax import features, predict

    if not (FLAGS.checkpoint and FLAGS.video):
        raise UserError("predict needs --checkpoint=DIR (a fine-tuned workdir) and --video=FILE")
    _clip_flags()
    ckpt = features.load_checkpoint(FLAGS.checkpoint)
    output = FLAGS.output or os.path.splitext(FLAGS.video)[0] + "_aus.csv"
    summary = predict.predict_video(ckpt, FLAGS.video, output, plot=FLAGS.plot, detect=FLAGS.detect,
                                    detector=FLAGS.detector, batch_size=FLAGS.batch_size, hop=FLAGS.hop,
                                    align=FLAGS.align)
    print(f"{FLAGS.video}: {summary['frames']} frames, {summary['faces']} with a face, "
          f"{summary['clips']} clips -> {output}" + (f", {FLAGS.plot}" if FLAGS.plot else ""))


COMMANDS = {"demo": _demo, "pretrain": _pretrain, "finetune": _finetune, "evaluate": _evaluate,
            "crossval": _crossval, "priors": _priors, "build-data": _build_data,
            "convert": _convert, "features": _features, "predict": _predict}
# Commands that run as one job over all processes of a multi-process launch (launch/): they
# join jax.distributed before anything starts a backend. The others are per-process tools.
DISTRIBUTED_COMMANDS = ("pretrain", "finetune", "evaluate", "crossval", "priors")


def _require_config_and_workdir():
    if FLAGS.config is None:
        raise UserError("--config is required, e.g. --config=configs/pretrain.py:B")
    if not FLAGS.workdir:
        raise UserError("--workdir is required")
    return FLAGS.config, FLAGS.workdir


def setup_logging() -> None:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/jax chatter
    root = logging.getLogger()
    # Python's default handler, set up by a library (tfds, via absl) that logged while the config loaded
    for handler in root.handlers[:]:
        if handler.formatter is not None and handler.formatter._fmt == logging.BASIC_FORMAT:
            root.removeHandler(handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("auvmae").setLevel(logging.INFO)
    logging.getLogger("jax").setLevel(logging.WARNING)  # e.g. "Unable to initialize backend 'tpu'"


CACHE_BYTES = 4 << 30  # the default compilation cache's size limit


def setup_compilation_cache() -> None:
    """XLA's compiled programs persist on disk, so a resumed or repeated run skips the compile.

    In `$JAX_COMPILATION_CACHE_DIR` where that is set (empty: no cache), else in
    `${XDG_CACHE_HOME:-~/.cache}/auvmae/jax`, at most `CACHE_BYTES` there (the least recently
    used entries go; `$JAX_COMPILATION_CACHE_MAX_SIZE` sets another limit, -1 none). jax
    keys each entry on the program, the compiler options, the devices and its own version;
    programs that compiled in under `jax_persistent_cache_min_compile_time_secs` (1 s) are
    not stored.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # jax reads it at import
    # Through the environment, which jax reads at import (commands that never import jax, such as
    # build-data, do not pay for importing it here), and which child processes inherit.
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(cache, "auvmae", "jax")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(CACHE_BYTES))
    if "jax" in sys.modules:  # imported already: it read the environment before these were set
        jax = sys.modules["jax"]
        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if len(argv) >= 2 else 2
    command = argv[1]
    if command not in COMMANDS:
        print(f"auvmae: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help", "--helpfull") for a in argv[2:]):
        lines = USAGE.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith(f"  {command} "))
        end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")), len(lines))
        print("usage: auvmae COMMAND [--flags]\n\n" + "\n".join(lines[start:end]))
        print("\nflags (each command reads the ones that name it; --config.KEY=VALUE overrides a config):")
        print(FLAGS.module_help(__name__))
        return 0
    args = [{"--no-detect": "--nodetect", "--no-align": "--noalign"}.get(a, a) for a in argv[2:]]
    if command == "demo" and not any(a == "--config" or a.startswith("--config=") for a in args):
        args.insert(0, f"--config={_demo_config_path()}")  # so that --config.KEY=VALUE shrinks the demo
    try:
        _parse_flags(["auvmae " + command, *args])
    except UserError as e:
        print(f"auvmae {command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    setup_logging()
    setup_compilation_cache()
    try:
        if command in DISTRIBUTED_COMMANDS:
            from auvmae_jax import distributed

            distributed.initialize()
        COMMANDS[command]()
    except UserError as e:
        print(f"auvmae {command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Preempted as e:  # saved; the same command continues (launch/ requeues on this code)
        print(f"auvmae {command}: {_one_line(e)}", file=sys.stderr)
        return Preempted.EXIT_CODE
    return 0


def _parse_flags(argv: list[str]) -> None:
    """absl/config_flags parsing with one-line errors for bad flags, files and keys."""
    config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    # A second main() in one process starts from the defaults, not from the last call's flags,
    # and without the --config.KEY flags that config_flags registered for the last call's overrides.
    FLAGS.unparse_flags()
    for name in [n for n in FLAGS if n.startswith("config.")]:
        delattr(FLAGS, name)
    process_argv, sys.argv = sys.argv, argv  # config_flags reads the --config.KEY overrides off sys.argv
    try:
        FLAGS(argv)
    except flags.Error as e:
        text = str(e)
        if config_file is not None and "Traceback (most recent call last)" in text:  # its get_config raised
            text = f"config {config_file}: " + re.sub(r"^\w+: ", "", text.strip().splitlines()[-1].strip())
        raise UserError(text) from e
    except (AttributeError, KeyError) as e:  # an override of a key the config does not have
        text = str(e)
        key = re.search(r"[A-Za-z_]\w*", text).group(0)
        given = next((a for a in argv if a.startswith("--config.") and f".{key}" in a.split("=")[0]),
                     "the overrides")
        hint = re.search(r'Did you mean "\w+" instead of "\w+"\?', text)
        hint = hint.group(0) if hint else ""
        raise UserError(f"unknown config key {key!r} in {given} (config {config_file}). {hint}") from e
    finally:
        sys.argv = process_argv
    if config_file is not None and not isinstance(FLAGS.config, ml_collections.ConfigDict):
        try:
            FLAGS.config.to_dict()  # config_flags reports a bad file only on first use
        except OSError as e:
            raise UserError(f"cannot load config file {config_file}: "
                            f"{str(e).strip().splitlines()[-1].strip()}") from e


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def entry_point() -> None:
    sys.exit(main())

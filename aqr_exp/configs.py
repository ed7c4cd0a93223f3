"""Load mmengine configs and derive variants by editing the loaded Config.

Why edit the loaded object instead of passing `--cfg-options` strings: mmengine
does not recompute derived fields (a new `data_root` leaves every `ann_file`
on the old root), so each change that has dependents goes through a function
here that updates them as well.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from mmengine.config import Config, ConfigDict

from aqr_exp.errors import AqrError, did_you_mean, one_line
from aqr_exp.files import check_input_file

AQR_KEY = "model.pts_bbox_head.aqr"
CAMERA_STRIDE = 16  # CMT's camera tokens come from the stride-16 level of CPFPN


class _Missing:
    """Marks a key that one side of a diff does not have."""

    def __repr__(self) -> str:
        return "—"


MISSING = _Missing()


CONFIG_EXPECTED = "an mmengine config file (.py)"


def read_config(path: Path, *, import_custom_modules: bool = True) -> Config:
    """Parse a config file a user names, or say in one line naming the file why not.

    Only what a file that is not a config raises is caught (a Python syntax error, a
    missing `_base_`, another format, undecodable bytes, a failed custom import): an
    error raised by the config's own code keeps its traceback, which points at the line."""
    check_input_file(path, "config", CONFIG_EXPECTED)
    try:
        return Config.fromfile(str(path), import_custom_modules=import_custom_modules)
    except SyntaxError as err:
        where = f" (line {err.lineno})" if err.lineno else ""
        raise AqrError(
            f"config {path}: not a valid mmengine config: Python syntax error{where}: {err.msg}"
        ) from None
    except (OSError, ValueError, ImportError, yaml.YAMLError) as err:
        raise AqrError(
            f"config {path}: not a valid mmengine config: {one_line(str(err))}"
        ) from None


def load_config(path: Path) -> Config:
    """Parse a config file without importing its custom modules (plans stay fast)."""
    return read_config(path, import_custom_modules=False)


def clone(cfg: Config) -> Config:
    return copy.deepcopy(cfg)


def _split(key: str) -> list[str]:
    if not key or any(not part for part in key.split(".")):
        raise AqrError(
            f"malformed config key {key!r}: use dotted names like model.pts_bbox_head.aqr"
        )
    return key.split(".")


def _child(container: Any, part: str) -> Any:
    """One step of a dotted path; list items by index (like `--cfg-options a.0.b`)."""
    if isinstance(container, (Mapping, Config)):
        if part in container:
            return container[part]
    elif isinstance(container, (list, tuple)) and part.isdigit() and int(part) < len(container):
        return container[int(part)]
    raise KeyError(part)


def iter_keys(value: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a config tree, inner nodes included (for suggestions)."""
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return
    for name, child in items:
        key = f"{prefix}.{name}" if prefix else str(name)
        yield key
        yield from iter_keys(child, key)


def unknown_key_error(key: str, cfg: Config, where: str) -> AqrError:
    hint = did_you_mean(key, list(iter_keys(cfg.to_dict())))
    return AqrError(f"unknown config key {key!r} in {where}{'; ' + hint.rstrip() if hint else ''}")


def get_key(cfg: Config, key: str) -> Any:
    """The value at a dotted key; KeyError when any part is absent."""
    node: Any = cfg
    for part in _split(key):
        node = _child(node, part)
    return node


def has_key(cfg: Config, key: str) -> bool:
    try:
        get_key(cfg, key)
    except KeyError:
        return False
    return True


def _replaced(container: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    head, rest = parts[0], parts[1:]
    if isinstance(container, tuple):
        items = list(container)
        items[int(head)] = _replaced(items[int(head)], rest, value)
        return tuple(items)
    index: Any = int(head) if isinstance(container, list) else head
    container[index] = _replaced(container[index], rest, value)
    return container


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set an existing dotted key (dicts become ConfigDicts, as mmengine does)."""
    parts = _split(key)
    get_key(cfg, key)  # raises KeyError for an unknown key
    if isinstance(value, dict):
        value = ConfigDict(value)
    head = parts[0]
    cfg[head] = _replaced(cfg[head], parts[1:], value)


def _type_name(value: Any) -> str:
    """With its article: 'an integer', 'a string' …"""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", tuple: "a list", type(None): "null"})
    return names.get(
        type(value), "a mapping" if isinstance(value, Mapping) else type(value).__name__
    )


def coerce(key: str, current: Any, value: Any) -> Any:
    """Check a new value against the type of the config's current one.

    Why: a sweep value of the wrong type (e.g. window_size=5.5 or 'big') would
    only fail minutes later inside the model; ints are accepted for floats.
    """
    if current is None or value is None:
        return value
    ok: bool
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(current, str):
        ok = isinstance(value, str)
    elif isinstance(current, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = type(current)(value) if ok else value
    elif isinstance(current, Mapping):
        ok = isinstance(value, Mapping)
        if ok and current.get("type") == value.get("type"):
            value = _coerce_mapping(key, current, value)
    else:
        ok = True
    if not ok:
        raise AqrError(
            f"{key} takes {_type_name(current)} (the config has {current!r}); "
            f"got {value!r}, {_type_name(value)}"
        )
    return value


def _coerce_mapping(key: str, current: Mapping[str, Any], value: Mapping[str, Any]) -> dict:
    """A mapping of the config's own `type` replaces the config's: each of its keys is
    one the config has, with a value of its type (a typo fails at plan time, not in
    the model's constructor an hour later). A mapping of another type is a new object
    the config cannot describe: it is taken as it is."""
    checked = {}
    for sub, item in value.items():
        if sub not in current:
            hint = did_you_mean(str(sub), [str(k) for k in current])
            known = ", ".join(str(k) for k in current)
            raise AqrError(f"{key}: unknown key {sub!r}; {hint}(the config's {key} has: {known})")
        checked[sub] = coerce(f"{key}.{sub}", current[sub], item)
    return checked


def apply_overrides(cfg: Config, overrides: Mapping[str, Any], where: str) -> None:
    """Set each dotted key to its value, checking that the key exists and the type fits."""
    for key, value in overrides.items():
        try:
            current = get_key(cfg, key)
        except KeyError:
            raise unknown_key_error(key, cfg, where) from None
        set_key(cfg, key, coerce(key, current, value))


def set_data_root(cfg: Config, root: str | Path) -> None:
    """Point the config at another data root, with every field derived from it.

    The config's own `data_root` is a prefix of the datasets' `data_root`, the
    evaluators' `data_root`/`ann_file`, db samplers' `info_path` and so on:
    every string under that prefix moves to the new root.
    """
    old = cfg.get("data_root")
    if not isinstance(old, str) or old.strip("./") == "":
        raise AqrError(f"{cfg.filename}: the config needs a top-level data_root (got {old!r})")
    old_base = old.rstrip("/")
    new = str(root).rstrip("/") + "/"

    def move(value: Any) -> Any:
        if isinstance(value, str):
            if value in (old_base, old_base + "/"):
                return new
            if value.startswith(old_base + "/"):
                return new + value[len(old_base) + 1 :]
            return value
        if isinstance(value, Mapping):
            for name in list(value):
                value[name] = move(value[name])
            return value
        if isinstance(value, list):
            value[:] = [move(item) for item in value]
            return value
        if isinstance(value, tuple):
            return tuple(move(item) for item in value)
        return value

    for name in list(cfg.keys()):
        cfg[name] = move(cfg[name])


def set_seed(cfg: Config, seed: int) -> None:
    """Seed in the config itself, so mmdet3d's own tools/train.py reproduces it too."""
    randomness = dict(cfg.get("randomness") or {})
    randomness["seed"] = seed
    cfg.randomness = randomness


PREDICTIONS_DIR = "predictions"
NUSCENES_METRICS = ("NuScenesMetric", "CmtNuScenesMetric")
# Keys that name where a run writes, not what it trains: they differ between any two runs.
RUN_PLACES = frozenset(
    {"work_dir", "val_evaluator.jsonfile_prefix", "test_evaluator.jsonfile_prefix"}
)
LOGGING_KEY = "visualizer.vis_backends"  # the trackers a run logs to (aqr_exp.trackers)
TRACKER_BACKENDS = frozenset({"TensorboardVisBackend", "MLflowVisBackend", "WandbVisBackend"})


def is_run_place(key: str) -> bool:
    """A dotted key that says where a run writes or logs, never what it trains."""
    return key in RUN_PLACES or key == LOGGING_KEY or key.startswith(LOGGING_KEY + ".")


def set_vis_backends(cfg: Config, backends: list[dict[str, Any]]) -> None:
    """Log to these trackers only: the config's own tracker backends are replaced, its
    LocalVisBackend (the scalars.json collect reads) is kept."""
    visualizer = cfg.get("visualizer") or ConfigDict(type="Visualizer", name="visualizer")
    local = [
        b for b in visualizer.get("vis_backends") or [] if b.get("type") not in TRACKER_BACKENDS
    ]
    visualizer["vis_backends"] = (local or [ConfigDict(type="LocalVisBackend")]) + [
        ConfigDict(backend) for backend in backends
    ]
    cfg.visualizer = visualizer


def keep_predictions(cfg: Config) -> None:
    """NuScenesMetric writes its results JSON under the work dir (`predictions/val`,
    `predictions/test`) instead of a temporary folder, so collect can keep the
    predictions behind each number for the paired bootstrap."""
    for loop in ("val", "test"):
        evaluators = cfg.get(f"{loop}_evaluator")
        for evaluator in evaluators if isinstance(evaluators, list) else [evaluators]:
            if isinstance(evaluator, dict) and evaluator.get("type") in NUSCENES_METRICS:
                evaluator["jsonfile_prefix"] = str(Path(cfg.work_dir) / PREDICTIONS_DIR / loop)


def set_checkpoint_interval(cfg: Config, interval: int) -> None:
    """Save a checkpoint every `interval` epochs (or iterations for iteration-based
    loops) so an interrupted run resumes close to where it stopped."""
    hook = (cfg.get("default_hooks") or {}).get("checkpoint")
    if hook is None:
        raise AqrError(f"{cfg.filename}: no default_hooks.checkpoint to set the interval on")
    hook["interval"] = interval


def train_length(cfg: Config) -> tuple[str, int] | None:
    """('epoch', max_epochs) or ('iter', max_iters) of the training loop."""
    train_cfg = cfg.get("train_cfg") or {}
    if "max_epochs" in train_cfg:
        return "epoch", int(train_cfg["max_epochs"])
    if "max_iters" in train_cfg:
        return "iter", int(train_cfg["max_iters"])
    return None


def final_checkpoint(cfg: Config) -> Path:
    """The checkpoint mmengine's CheckpointHook writes at the end of training."""
    length = train_length(cfg)
    if length is None:
        raise AqrError(f"{cfg.filename}: train_cfg has neither max_epochs nor max_iters")
    unit, count = length
    return Path(cfg.work_dir) / f"{unit}_{count}.pth"


# Initializers that load weights from a file (the plugin's and mmengine's own).
PRETRAINED_INITS = frozenset({"CmtPretrainedBackbone", "Pretrained"})


def _is_pretrained(init: Any) -> bool:
    return isinstance(init, Mapping) and init.get("type") in PRETRAINED_INITS


def _owners_of(value: Any, name: str, key: str) -> Iterator[tuple[str, Any]]:
    """(key, dict) of every dict under `value` that has an entry `name`."""
    if isinstance(value, Mapping):
        if name in value:
            yield key, value
        for child_name, child in value.items():
            yield from _owners_of(child, name, f"{key}.{child_name}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _owners_of(child, name, f"{key}[{index}]")


def _inits(owner: Mapping[str, Any]) -> list[Any]:
    init = owner["init_cfg"]
    return init if isinstance(init, list) else [init]


def pretrained_files(cfg: Config) -> list[tuple[str, str]]:
    """(config key, local file) of every weight file the model's init_cfgs load."""
    return [
        (f"{key}.init_cfg.checkpoint", str(item["checkpoint"]))
        for key, owner in _owners_of(cfg.get("model") or {}, "init_cfg", "model")
        for item in _inits(owner)
        if _is_pretrained(item) and "://" not in str(item.get("checkpoint", "://"))
    ]


def drop_pretrained_inits(cfg: Config) -> None:
    """Train without the pretrained inits: `load_from` or a resume replaces every weight
    they would load, so their files need not exist."""
    for _, owner in list(_owners_of(cfg.get("model") or {}, "init_cfg", "model")):
        if any(_is_pretrained(item) for item in _inits(owner)):
            kept = [item for item in _inits(owner) if not _is_pretrained(item)]
            owner["init_cfg"] = kept or None


def gt_database_files(cfg: Config) -> list[tuple[str, str]]:
    """(config key, file) of every GT-sampling database the training pipeline reads."""
    loader = cfg.get("train_dataloader") or {}
    return [
        (f"{key}.info_path", str(owner["info_path"]))
        for key, owner in _owners_of(loader, "info_path", "train_dataloader")
    ]


def check_input_files(cfg: Config, where: str) -> None:
    """The files a training reads besides the data set (pretrained weights, the GT-sampling
    database) exist before it starts."""
    missing = [(key, path) for key, path in pretrained_files(cfg) if not Path(path).is_file()]
    if missing:
        listed = "; ".join(f"{path} ({key})" for key, path in missing)
        raise AqrError(
            f"{Path(cfg.filename).name} starts from pretrained weights that are missing: "
            f"{listed} ({where}); the README's full-scale section says where to get them, "
            "or set load_from to a trained checkpoint"
        )
    missing = [(key, path) for key, path in gt_database_files(cfg) if not Path(path).is_file()]
    if missing:
        listed = "; ".join(f"{path} ({key})" for key, path in missing)
        raise AqrError(
            f"{Path(cfg.filename).name} trains with GT-sampling, whose database {listed} "
            f"is missing ({where}): build it with `aqr-exp data prepare nuscenes --root "
            f"{cfg.get('data_root')}`"
        )


def config_hash(cfg: Config) -> str:
    """A short content hash of a loaded config (its `_base_` files included)."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _absent(value: Any) -> bool:
    return value is None or value is MISSING


def _diff(old: Any, new: Any, key: str, out: list[tuple[str, Any, Any]]) -> None:
    old_map = isinstance(old, Mapping)
    new_map = isinstance(new, Mapping)
    if old_map or new_map:
        if not (old_map and new_map) and not (_absent(old) or _absent(new)):
            out.append((key, old, new))
            return
        left = old if old_map else {}
        right = new if new_map else {}
        for name in [*left, *(n for n in right if n not in left)]:
            sub = f"{key}.{name}" if key else str(name)
            _diff(left.get(name, MISSING), right.get(name, MISSING), sub, out)
        return
    both_lists = isinstance(old, (list, tuple)) and isinstance(new, (list, tuple))
    if both_lists and len(old) == len(new) and any(isinstance(v, Mapping) for v in old):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            _diff(a, b, f"{key}.{index}", out)
        return
    if old != new:
        out.append((key, old, new))


def config_diff(base: Config, other: Config) -> list[tuple[str, Any, Any]]:
    """(dotted key, base value, other value) for every leaf that differs.

    A dict that replaces None (e.g. the baseline's `aqr=None`) shows as its
    leaves, each with the base value MISSING.
    """
    out: list[tuple[str, Any, Any]] = []
    _diff(base.to_dict(), other.to_dict(), "", out)
    return out


def parse_value(text: str) -> Any:
    """A command-line value: int, float, bool, null, a [list]/{dict} in YAML, else a string."""
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if text[:1] in "[{(":
        try:
            return yaml.safe_load(text.replace("(", "[").replace(")", "]"))
        except yaml.YAMLError as err:
            raise _ValueSyntaxError(text, _yaml_reason(err)) from None
    return text


class _ValueSyntaxError(AqrError):
    """A bracketed command-line value that is not valid YAML."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"cannot parse the value {text!r}: {reason}")
        self.text, self.reason = text, reason


def _yaml_reason(err: yaml.YAMLError) -> str:
    """PyYAML's problem and column, without its multi-line excerpt of the text."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        return err.problem + (f" at column {mark.column + 1}" if mark is not None else "")
    return one_line(str(err))


def parse_values(text: str, option: str) -> list[Any]:
    """The values of a sweep option (`5,8,[1,2]`): one line naming the option and the
    whole value when a part is not valid YAML."""
    expected = "expected e.g. 2,4,8 or [2, 4, 8]"
    parts = [part.strip() for part in _split_outside_brackets(text)]
    if not all(parts):
        raise AqrError(f"{option} {text!r}: an empty value ({expected})")
    try:
        return [parse_value(part) for part in parts]
    except _ValueSyntaxError as err:
        which = "" if err.text == text.strip() else f"{err.text!r}: "
        raise AqrError(
            f"{option} {text!r}: not a YAML list ({expected}): {which}{err.reason}"
        ) from None


def split_values(text: str) -> list[str]:
    """Split `5,8,[1,2]` at the commas outside brackets."""
    values = [part.strip() for part in _split_outside_brackets(text)]
    if any(not value for value in values):
        raise AqrError(f"empty value in {text!r}: give comma-separated values like 5,8,10")
    return values


def _split_outside_brackets(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def bev_map_size(cfg: Config) -> tuple[int, int] | None:
    """(rows, cols) of the BEV feature map the LiDAR branch hands to the head.

    Grid from the pillar scatter's `output_shape` or the sparse encoder's
    `sparse_shape` (which downsamples by 8), then the first backbone stride
    and the FPN's first upsample stride (SECOND + SECONDFPN bring every level
    to the first level's resolution).
    """
    model = cfg.get("model") or {}
    middle = model.get("pts_middle_encoder") or {}
    if "output_shape" in middle:
        rows, cols = middle["output_shape"][:2]
        down = 1.0
    elif "sparse_shape" in middle:
        rows, cols = middle["sparse_shape"][1:3]
        down = 8.0
    else:
        return None
    strides = (model.get("pts_backbone") or {}).get("layer_strides") or [1]
    upsample = (model.get("pts_neck") or {}).get("upsample_strides") or [1]
    down = down * strides[0] / upsample[0]
    return math.ceil(rows / down), math.ceil(cols / down)


def _find_final_size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, Mapping):
        if "final_size" in value:
            height, width = value["final_size"]
            return int(height), int(width)
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _find_final_size(item)
            if found:
                return found
    return None


def camera_map_size(cfg: Config) -> tuple[int, int] | None:
    """(rows, cols) of one view's stride-16 camera feature map."""
    size = _find_final_size(cfg.get("train_pipeline") or cfg.get("train_dataloader"))
    if size is None:
        return None
    return math.ceil(size[0] / CAMERA_STRIDE), math.ceil(size[1] / CAMERA_STRIDE)


def check_aqr_windows(cfg: Config, where: str) -> None:
    """Reject AQR windows that are not positive integers or exceed the feature map.

    A window is "larger than the feature map" when it exceeds the map in both
    directions: it then covers the whole map, and the local window is global.
    """
    try:
        aqr = get_key(cfg, AQR_KEY)
    except KeyError:
        return
    if not aqr:
        return
    size = aqr.get("window_size")
    for low, high in (("window_min", "window_max"), ("cam_window_min", "cam_window_max")):
        bounds = aqr.get(low), aqr.get(high)
        if aqr.get("window_mode") == "adaptive" and None not in bounds and bounds[0] > bounds[1]:
            raise AqrError(
                f"{AQR_KEY}.{low}={bounds[0]} exceeds {AQR_KEY}.{high}={bounds[1]}: an "
                f"adaptive window's extent lies within [min, max] ({where})"
            )
    maps = {"bev_window": bev_map_size(cfg), "cam_window": camera_map_size(cfg)}
    # adaptive windows: the largest extent is the window every query's keys come from
    largest = {"bev_window": "window_max", "cam_window": "cam_window_max"}
    for map_name, feature_map in maps.items():
        name = map_name
        if aqr.get("window_mode") == "adaptive" and aqr.get(largest[name]) is not None:
            name = largest[name]
        own = aqr.get(name)
        window = size if own is None else own
        if window is None:
            continue
        label = f"{AQR_KEY}.{'window_size' if own is None else name}"
        if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
            raise AqrError(f"{label} must be a positive integer, got {window!r} ({where})")
        if feature_map is not None and window > max(feature_map):
            raise AqrError(
                f"{label}={window} is larger than the {map_name.split('_')[0].upper()} feature map "
                f"({feature_map[0]}x{feature_map[1]} cells) of {Path(cfg.filename).name} ({where})"
            )


def dump_config(cfg: Config, path: Path) -> None:
    """Write the resolved config; mmdet3d's tools/train.py runs it unchanged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg.dump(str(path))

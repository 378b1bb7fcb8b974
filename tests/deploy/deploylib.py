"""Shared helpers of the deploy checks (tests/deploy/*.py): the operator contract
(docs/service-contract.md) parsed into flags and metrics, and Kubernetes quantities."""
import re

_UNITS = {
    "": 1, "B": 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


def parse_bytes(text):
    """'6Gi' (Kubernetes) or '4GiB' (kvtier flags) -> bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"not a byte quantity: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_seconds(text):
    """'20s', '1m', '1h', '1500ms' -> seconds (float)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _section(text, title):
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def contract_flags(path):
    """Flag names ('--listen', ...) of the contract's flag table."""
    text = open(path, encoding="utf-8").read()
    flags = set()
    for line in _section(text, "## Flags").splitlines():
        if line.startswith("| `--"):
            first_cell = line.split("|")[1]
            flags.update(re.findall(r"`(--[a-z_]+)`", first_cell))
    if not flags:
        raise AssertionError(f"{path}: no flags found")
    return flags


def contract_metrics(path):
    """{metric name: type} of the contract's metric table."""
    text = open(path, encoding="utf-8").read()
    metrics = {}
    for line in _section(text, "## Metrics").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and re.fullmatch(r"`kvtier_[a-z_]+`", cells[1]):
            metrics[cells[1].strip("`")] = cells[2].split()[0]
    if not metrics:
        raise AssertionError(f"{path}: no metrics found")
    return metrics


def parse_flagfile(text):
    """absl flag file -> {'--name': 'value'} (comments and blank lines skipped)."""
    flags = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("--") or "=" not in line:
            raise AssertionError(f"flag file line is not --name=value: {line!r}")
        name, value = line.split("=", 1)
        if name in flags:
            raise AssertionError(f"flag {name} given twice")
        flags[name] = value
    return flags

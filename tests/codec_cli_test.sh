#!/usr/bin/env bash
# `kvtier codec` end to end through the real binary: every subcommand on synthetic data,
# and clear errors with the right exit codes for a wrong shape, a wrong dtype, a corrupt
# or truncated file and bad flags.  Usage: codec_cli_test.sh path/to/kvtier
set -euo pipefail
K=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
fail() { echo "FAIL: $*" >&2; exit 1; }

# expect RC PATTERN -- CMD...: exit code RC and stderr matching PATTERN.
expect() {
  local rc=$1 pattern=$2
  shift 3
  set +e
  "$@" >out.txt 2>err.txt
  local got=$?
  set -e
  [ "$got" -eq "$rc" ] || { cat out.txt err.txt; fail "$* exited $got, expected $rc"; }
  grep -q -- "$pattern" err.txt || { cat err.txt; fail "$*: stderr lacks '$pattern'"; }
}

"$K" codec synth --out-dir . --tokens 300 --kv-heads 2 --q-heads 4 --head-dim 64 --queries 2 --seed 3 >/dev/null
"$K" codec encode --k K.npy --v V.npy --out a.kvt >/dev/null
"$K" codec encode --k K.npy --v V.npy --out b.kvt >/dev/null
cmp a.kvt b.kvt || fail "encode is not deterministic"
"$K" codec inspect a.kvt >inspect.txt
grep -q "tokens 300, kv_heads 2, head_dim 64" inspect.txt || fail "inspect shape"
grep -qE "^ +0 +fp16 +128 +sink" inspect.txt || fail "inspect sink block"
grep -qE "^ +1 +tiles +128" inspect.txt || fail "inspect tile block"
grep -qE "^ +2 +fp16 +44 +tail" inspect.txt || fail "inspect tail block"
"$K" codec decode a.kvt --out-k k.npy --out-v v.npy --dtype float16 >/dev/null
# A decoded float16 file is 128 header bytes + 300*2*64*2 data bytes.
[ "$(stat -c %s k.npy)" -eq $((128 + 300 * 2 * 64 * 2)) ] || fail "decoded K size"
# Re-encoding the decoded cache works (round trip through fp16 .npy).
"$K" codec encode --k k.npy --v v.npy --out c.kvt --sink-blocks 0 --preset k4v4_g64 >/dev/null
"$K" codec inspect c.kvt | grep -q "4 compressed, 1 fp16" || fail "sink-blocks 0 with G=64"
"$K" codec attend a.kvt --q Q.npy --out o.npy >/dev/null
[ "$(stat -c %s o.npy)" -eq $((128 + 2 * 4 * 64 * 4)) ] || fail "attend output size"
"$K" codec attend a.kvt --q Q.npy --out o64.npy --float64 >/dev/null
"$K" codec tiles --k K.npy --v V.npy --out r.bin >/dev/null
[ "$(stat -c %s r.bin)" -eq $((2 * 2 * 7296)) ] || fail "tiles size"
# The tiles of a sink-free encode are the payload bodies: block 1's records appear verbatim.
"$K" codec eval --k K.npy --v V.npy --q Q.npy >eval.txt
grep -q "^kvarn k4v2_g128" eval.txt && grep -q "^rtn k4v2 (kivi)" eval.txt && grep -q "^fp8 e4m3" eval.txt ||
  fail "eval rows"

# ---- errors: exit 1 with a clear message
# mknpy FILE DESCR SHAPE DATA_BYTES: a format-1.0 .npy with random data.
mknpy() {
  local header="{'descr': '$2', 'fortran_order': False, 'shape': $3, }"
  local pad=$((64 - (10 + ${#header} + 1) % 64))
  [ "$pad" -eq 64 ] && pad=0
  header="$header$(printf '%*s' "$pad" '')"
  local len=$((${#header} + 1))
  printf '\x93NUMPY\x01\x00' >"$1"
  printf "\\x$(printf %02x $((len % 256)))\\x$(printf %02x $((len / 256)))" >>"$1"
  printf '%s\n' "$header" >>"$1"
  head -c "$4" /dev/urandom >>"$1"
}
mknpy f8.npy '<f8' '(2, 2, 64)' $((2 * 2 * 64 * 8))
expect 1 "unsupported dtype '<f8'" -- "$K" codec encode --k f8.npy --v f8.npy --out x.kvt
mknpy i4.npy '<i4' '(2, 2, 64)' $((2 * 2 * 64 * 4))
expect 1 "unsupported dtype '<i4'" -- "$K" codec encode --k i4.npy --v i4.npy --out x.kvt
mknpy flat.npy '<f2' '(300, 128)' $((300 * 128 * 2))
expect 1 "shape (300, 128) is not \[tokens, kv_heads, head_dim\]" -- "$K" codec encode --k flat.npy --v flat.npy --out x.kvt
mknpy d96.npy '<f4' '(300, 2, 96)' $((300 * 2 * 96 * 4))
expect 1 "head_dim 96 is not supported" -- "$K" codec encode --k d96.npy --v d96.npy --out x.kvt
mknpy q128.npy '<f4' '(4, 128)' $((4 * 128 * 4))
expect 1 "head_dim 128 differs from the cache's 64" -- "$K" codec attend a.kvt --q q128.npy --out x.npy
mknpy q3.npy '<f4' '(3, 64)' $((3 * 64 * 4))
expect 1 "3 query heads is not a positive multiple of 2 KV heads" -- "$K" codec attend a.kvt --q q3.npy --out x.npy
mkdir -p other && "$K" codec synth --out-dir other --tokens 299 --kv-heads 2 --q-heads 2 --head-dim 64 >/dev/null
expect 1 "differs from K's (300, 2, 64)" -- "$K" codec encode --k K.npy --v other/V.npy --out x.kvt
mknpy nan.npy '<f2' '(128, 1, 64)' 0
printf '\x00\x7e%.0s' $(seq 1 $((128 * 64))) >>nan.npy
expect 1 "non-finite" -- "$K" codec encode --k nan.npy --v nan.npy --out x.kvt
head -c 1000 K.npy >trunc.npy
expect 1 "not a valid .npy file" -- "$K" codec encode --k trunc.npy --v V.npy --out x.kvt
printf 'hello world' >garbage.npy
expect 1 "missing the" -- "$K" codec encode --k garbage.npy --v V.npy --out x.kvt
expect 1 "cannot open file" -- "$K" codec encode --k missing.npy --v V.npy --out x.kvt
cp a.kvt corrupt.kvt
printf '\xff' | dd of=corrupt.kvt bs=1 seek=20000 conv=notrunc 2>/dev/null
expect 1 "DATA_LOSS" -- "$K" codec decode corrupt.kvt --out-k x.npy --out-v y.npy
head -c 5000 a.kvt >short.kvt
expect 1 "not a valid kvtier codec file" -- "$K" codec inspect short.kvt
expect 1 "not a valid kvtier codec file" -- "$K" codec attend K.npy --q Q.npy --out x.npy

# ---- usage errors: exit 2
expect 2 "missing --v" -- "$K" codec encode --k K.npy --out x.kvt
expect 2 "unknown preset 'k3v3'" -- "$K" codec encode --k K.npy --v V.npy --out x.kvt --preset k3v3
expect 2 "unknown flag --frob" -- "$K" codec inspect a.kvt --frob 1
expect 2 "--iterations must be an integer" -- "$K" codec encode --k K.npy --v V.npy --out x --iterations 99
expect 2 "unknown subcommand 'nope'" -- "$K" codec nope
[ ! -e x.kvt ] || fail "a failed encode left an output file"
echo "codec CLI: all checks passed"

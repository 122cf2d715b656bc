#!/bin/sh
# The demo end to end on the tiny preset: it runs, its self-check of the
# selection passes, it is deterministic for a seed and sensitive to it,
# writes a real PNG, and rejects bad arguments with status 2.
# NSA_DEMO_WRAPPER (optional) prefixes each demo run, e.g. with valgrind.
set -u
demo="${NSA_DEMO_WRAPPER:-} ./examples/nsa-demo"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

$demo --help > "$tmp/help" || bad "--help exited non-zero"
grep -q 'tiny' "$tmp/help" || bad "--help does not list the presets"

# run OUT ARGS...: the tiny preset into OUT, without the timing line (it
# differs from run to run; everything else must not).
run() {
    out=$1
    shift
    $demo --config tiny --quiet "$@" > "$out.raw" || return 1
    grep -v '^prefill' "$out.raw" > "$out"
}

run "$tmp/a" --seed 7 --png "$tmp/a.png" || bad "tiny run failed"
cat "$tmp/a"
grep -q '^selection check.*follow spec 3' "$tmp/a" || bad "no selection check line"
grep -q '^gate means' "$tmp/a" || bad "no gate means line"
if grep -q '^png.*disabled' "$tmp/a"; then
    echo "PNG output disabled in this build"
else
    sig=$(od -An -tx1 -N8 "$tmp/a.png" 2>/dev/null | tr -d ' \n')
    [ "$sig" = 89504e470d0a1a0a ] || bad "a.png is not a PNG (signature '$sig')"
fi

run "$tmp/b" --seed 7 --png - || bad "second tiny run failed"
grep -v '^png' "$tmp/a" > "$tmp/a2"
grep -v '^png' "$tmp/b" > "$tmp/b2"
cmp -s "$tmp/a2" "$tmp/b2" || bad "two runs with seed 7 differ"
run "$tmp/c" --seed 8 --png - || bad "seed 8 run failed"
[ "$(grep '^gate means' "$tmp/b")" != "$(grep '^gate means' "$tmp/c")" ] ||
    bad "seeds 7 and 8 give the same gate means"

# Weights written and read back give the same layer, hence the same run
# (the input depends only on --seed); the config line differs by its name.
run "$tmp/d" --seed 7 --png - --save-weights "$tmp/w.safetensors" ||
    bad "--save-weights run failed"
run "$tmp/e" --seed 7 --png - --weights "$tmp/w.safetensors" ||
    bad "--weights run failed"
sed 's/^config *: [^:]*:/config:/' "$tmp/d" > "$tmp/d2"
sed 's/^config *: [^:]*:/config:/' "$tmp/e" > "$tmp/e2"
cmp -s "$tmp/d2" "$tmp/e2" || bad "the run from saved weights differs from the original"

for args in "--config nope" "--seq 0" "--group 2" "--bogus" "--seed"; do
    $demo --config tiny --quiet --png - $args > /dev/null 2>&1
    rc=$?
    [ $rc -eq 2 ] || bad "'$args' exited $rc, expected 2"
done
$demo --config tiny --quiet --png - --backend no-such-backend > /dev/null 2>&1 &&
    bad "an unknown backend was accepted"

[ $fails -eq 0 ] && echo "demo-smoke: all checks passed"
[ $fails -eq 0 ]

#!/usr/bin/env bash
# Safe Delta and SafeMERGE beside a real world's methods, and `realignkit tune` against a grid,
# on a world built by `realignkit demo` (read only):
#
#     bash benchmarks/real_world/tune_and_new_methods.sh WORLD OUT [STEP...]
#
# STEP: safety-ft, new-KIND[:METHOD,...] (the recipes the world lacks, at their papers'
#       settings), tune-resta-KIND, grid-resta-KIND, tune-irr-KIND, grid-irr-KIND, table;
#       KIND: full or lora (default: every step, cheapest first). Every step waits
# for the world's models it reads, runs with one torch thread, and resumes (models and
# results are cached under OUT). The tune target is the aligned model's harmfulness on the
# world's validation split (its reports/aligned-validation); search on the validation split,
# the chosen model judged once on the test split (the world's English harmful test sets
# pooled, and XSTest safe); the grid has the search's resolution (9 values = 3 bisection steps
# over the declared interval), so both can reach the same value.
set -euo pipefail
WORLD=$(realpath "$1"); OUT=$(realpath -m "$2"); shift 2
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(safety-ft tune-resta-full new-full:safemerge tune-resta-lora \
    new-lora:safemerge grid-resta-full table new-lora:safedelta new-full:safedelta table \
    grid-resta-lora tune-irr-lora grid-irr-lora table)
HERE=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1 PYTHONPATH="$HERE/../../src${PYTHONPATH:+:$PYTHONPATH}"
PY="nice -n 19 python3"
mkdir -p "$OUT"

wait_for() { while [ ! -e "$1" ]; do sleep 30; done; }
stamp() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$OUT/steps.log"; }

target() {
    wait_for "$WORLD/reports/aligned-validation/summary.json"
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['scores']['harmfulness'])" \
        "$WORLD/reports/aligned-validation/summary.json"
}

tune_run() {  # tune_run NAME KIND METHOD PARAM [extra tune options...]
    local name=$1 kind=$2 method=$3 param=$4; shift 4
    wait_for "$WORLD/models/ft-$kind"
    wait_for "$WORLD/models/safety-vector"
    $PY "$HERE/new_methods.py" split --world "$WORLD" --out "$OUT" >/dev/null
    local ft=(--finetuned "$WORLD/models/ft-$kind")
    [ "$kind" = lora ] && ft=(--adapter "$WORLD/models/ft-$kind")
    stamp "start $name"
    $PY -m realignkit tune --method "$method" --param "$param" \
        --target-harmfulness "$(target)" \
        --aligned "$WORLD/models/aligned" "${ft[@]}" \
        --safety-vector "$WORLD/models/safety-vector" \
        --safety-data "$WORLD/data/harmful_refusals.jsonl" \
        --calibration "$WORLD/data/gsm8k_train.jsonl" \
        --validation-harmful "$WORLD/data/validation/harmful.jsonl" \
        --validation-benign "$WORLD/data/validation/benign.jsonl" \
        --test-harmful "$OUT/data/test_harmful_en.jsonl" \
        --test-benign "$WORLD/data/test/xstest_safe.jsonl" \
        --max-new-tokens 24 --batch-size 16 --chunk 8 --device cpu \
        -o "$OUT/tune/$name" "$@" 2>"$OUT/tune/$name.log" | tee "$OUT/tune/$name.txt"
    stamp "done $name"
}

mkdir -p "$OUT/tune"
RESTA_GRID=0,0.25,0.5,0.75,1,1.25,1.5,1.75,2
IRR_GRID=0,0.125,0.25,0.375,0.5,0.625,0.75,0.875,1
IRR_SET=(--set num_samples=32 --set max_length=160)  # the demo's IRR data (method_extras)
for step in "${STEPS[@]}"; do
    case $step in
        safety-ft)
            wait_for "$WORLD/models/aligned"
            wait_for "$WORLD/data/harmful_refusals.jsonl"
            stamp "start $step"
            $PY "$HERE/new_methods.py" safety-ft --world "$WORLD" --out "$OUT" \
                >"$OUT/$step.log" 2>&1
            stamp "done $step" ;;
        new-*)
            spec=${step#new-}; kind=${spec%%:*}; only=""
            [ "$spec" != "$kind" ] && only=${spec#*:}
            wait_for "$WORLD/models/ft-$kind"
            wait_for "$WORLD/reports/aligned/summary.json"
            until ls "$WORLD"/sweeps/ft-*/config.json >/dev/null 2>&1; do sleep 30; done
            stamp "start $step"
            $PY "$HERE/new_methods.py" sweep --kinds "$kind" --only "$only" --world "$WORLD" \
                --out "$OUT" >"$OUT/${step//[:,]/_}.log" 2>&1
            stamp "done $step" ;;
        tune-resta-* | grid-resta-* | tune-irr-* | grid-irr-*)
            kind=${step##*-}; what=${step%-*}; method=${what#*-}
            param=gamma; grid=$RESTA_GRID; extra=()
            if [ "$method" = irr ]; then param=rho; grid=$IRR_GRID; extra=("${IRR_SET[@]}"); fi
            if [ "${what%%-*}" = tune ]; then
                tune_run "$step" "$kind" "$method" "$param" --steps 3 "${extra[@]}"
            else
                tune_run "$step" "$kind" "$method" "$param" --grid "$grid" "${extra[@]}"
            fi ;;
        table)
            $PY "$HERE/new_methods.py" table --world "$WORLD" --out "$OUT" >/dev/null \
                2>>"$OUT/table.log" || true ;;
        *) echo "unknown step $step" >&2; exit 2 ;;
    esac
done

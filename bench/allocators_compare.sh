#!/usr/bin/env bash
# The allocator comparison of issue 23: uniform, OWL, AlphaPruning (official and FARMS), DLP, DSA (published
# function), LSA (per block and per projection), ATP at its best beta and the curved power profile, on both
# embedded models, S = 0.5, 0.6, 0.7, three calibration seeds, perplexity and zero-shot accuracy. One
# `atp-viz compare` per variant and model, each writing its JSON table; every point goes to the results store
# as it finishes, so a killed run resumes where it stopped.
#
# Full size (hours on a 2-core CPU; run it where there is room):
#     bash bench/allocators_compare.sh
# Tiny size (the check that it runs, as tests/test_allocators_bench.py does; a tiny model folder and a text file):
#     TINY="--calib-samples 2 --seqlen 32 --eval-windows 1 --calibration cached"
#     MODELS=/tmp/atp-viz-tests/llama-4x64-v1 CORPUS=/tmp/atp-viz-tests/tiny-corpus-v1.txt SPARSITIES=0.6 SEEDS=0,1 \
#     METRICS=perplexity SIZE="$TINY --find-best" POWERS="0.5 2" DSA_SPARSITIES=0.6 SEARCH_SIZE="$TINY --trials 3" \
#     OUT=/tmp/alloc-compare bash bench/allocators_compare.sh
# ATP's curved profile (the power profile) runs its beta grid at each curvature p in POWERS (default 0.5 2 3,
# sweep2d's curved values; POWERS="" runs none), one `<model>-power-p<p>.json` each; `bench/allocators_table.py`
# reports, per sparsity, the p whose chosen point has the lowest validation perplexity. DSA's own evolutionary
# search over graphs runs at ATP's budget (`atp-viz search --space dsa --versus-atp`) per model and sparsity in
# DSA_SPARSITIES (default: none; the first calibration seed) with SEARCH_SIZE; the graph it finds is then measured
# on every seed like the other methods (`<model>-dsa-found-s<S>.json`). SEARCHED (default: none), one or more
# folders holding earlier `<model>-dsa-search-s<S>.json`: the graph of that search is measured again instead of
# searching anew (how the found graphs get zero-shot accuracy); a search missing from them is refused before any
# run. VARIANTS (default: all three) picks which of the single-schedule runs go first: `peers`, `farms`,
# `lsa-projection`; VARIANTS="" runs only the power profiles and DSA's searches (to add them at sparsities whose
# peers are already measured).
set -euo pipefail
PYTHON=${PYTHON:-python}
MODELS=${MODELS:-"smollm2-135m gemma3-270m"}
CORPUS=${CORPUS:-}
SPARSITIES=${SPARSITIES:-0.5,0.6,0.7}
SEEDS=${SEEDS:-0,1,2}
METRICS=${METRICS:-perplexity,zeroshot}
SIZE=${SIZE:-"--calib-samples 16 --seqlen 512 --eval-windows 16"}
OUT=${OUT:-bench/results/allocators_compare}
STORE=${STORE:-}
POWERS=${POWERS-"0.5 2 3"}
DSA_SPARSITIES=${DSA_SPARSITIES:-}
ALL_VARIANTS="peers farms lsa-projection"
VARIANTS=${VARIANTS-$ALL_VARIANTS}
SEARCH_SIZE=${SEARCH_SIZE:-"--calib-samples 16 --seqlen 512 --eval-windows 8 --val-windows 4 --calibration cached"}
SEARCHED=${SEARCHED:-}

searched() {  # the earlier search of model tag $1 at S = $2 in SEARCHED, or nothing
  local folder
  for folder in $SEARCHED; do
    if [ -s "$folder/$1-dsa-search-s$2.json" ]; then echo "$folder/$1-dsa-search-s$2.json"; return; fi
  done
}

if [ -n "$SEARCHED" ]; then
  for model in $MODELS; do
    tag=$(basename "$model")
    for s in ${DSA_SPARSITIES//,/ }; do
      if [ -z "$(searched "$tag" "$s")" ]; then
        echo "no DSA search of $tag at S = $s in SEARCHED ($SEARCHED); allowed: a folder holding" \
          "$tag-dsa-search-s$s.json" >&2
        exit 2
      fi
    done
  done
fi
mkdir -p "$OUT"

run() {
  local model=$1 name=$2
  shift 2
  local tag
  tag=$(basename "$model")
  echo "== $tag $name: $*" >&2
  # shellcheck disable=SC2086  # SIZE holds several options
  "$PYTHON" -m atp_viz compare --model "$model" ${CORPUS:+--corpus "$CORPUS"} --sparsities "$SPARSITIES" \
    --seeds "$SEEDS" --metrics "$METRICS" $SIZE ${STORE:+--store "$STORE"} --json "$@" > "$OUT/$tag-$name.json"
}

for model in $MODELS; do
  tag=$(basename "$model")
  for variant in $VARIANTS; do
    case $variant in
      peers) run "$model" peers --methods uniform,owl,alphapruning,dlp,dsa,lsa,atp ;;
      farms) run "$model" farms --methods alphapruning --estimator farms ;;
      lsa-projection) run "$model" lsa-projection --methods lsa --granularity projection --lam 0.07 ;;
      *) echo "unknown variant '$variant' in VARIANTS; allowed: $ALL_VARIANTS" >&2; exit 2 ;;
    esac
  done
  for p in $POWERS; do
    run "$model" "power-p$p" --methods power --power "$p"
  done
  for s in ${DSA_SPARSITIES//,/ }; do
    search=$(searched "$tag" "$s")
    if [ -z "$search" ]; then
      echo "== $tag DSA graph search at S = $s" >&2
      search="$OUT/$tag-dsa-search-s$s.json"
      # shellcheck disable=SC2086  # SEARCH_SIZE holds several options
      "$PYTHON" -m atp_viz search --space dsa --versus-atp --model "$model" ${CORPUS:+--corpus "$CORPUS"} \
        --sparsity "$s" --seed "${SEEDS%%,*}" $SEARCH_SIZE ${STORE:+--store "$STORE"} --json > "$search"
    fi
    # the graph it found (selected on the first seed's validation) measured like every other method, on every seed
    graph=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["best"]["graph"])' "$search")
    run "$model" "dsa-found-s$s" --methods dsa --graph "$graph" --sparsities "$s"
  done
done
echo "tables in $OUT" >&2

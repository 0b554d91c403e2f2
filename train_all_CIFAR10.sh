#!/bin/sh
# The reference's block comparison on CIFAR-10, PreResNet-20 (as its train_all_CIFAR10.sh): one block
# of each type in stage 1, each in its own run folder save_model/cifar10/20/<block>.
# As in the reference's script only snl gets --is_norm --is_sys; the other blocks use their own default
# affinity. (The reference code ignored those flags for PreResNet and built every block normalized +
# symmetric: append --is_norm --is_sys to reproduce its numbers.)
#
# Usage: sh train_all_CIFAR10.sh [more train_val.py flags ...]
#   DATA_ROOT (default ./data), LAUNCH (default python3) and DRY_RUN work as in train_snl.sh.
#   SEEDS="67 68 69" trains every block once per seed, into <block>_seed<S>.
# At the end the runs made are compared in one table (tools/compare_runs.py).
set -eu
cd "$(dirname "$0")"
DATA_ROOT=${DATA_ROOT:-./data}
. ./tools/seeded_runs.sh

train_block() {
    block=$1
    shift
    if [ "$block" = snl ]; then
        set -- --is_norm --is_sys "$@"
    fi
    train --pretrained False --dataset cifar10 --backbone preresnet --arch 20 --data_dir "$DATA_ROOT" \
        --nl-type "$block" --nl-nums 1 --checkpoints "$block" "$@"
}

for block in a2 nl snl ns cgnl dnl; do
    train_block "$block" "$@"
done
compare_runs

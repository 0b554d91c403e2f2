#!/bin/sh
# The reference's SNL experiments (train_snl.sh of the SNL release), one per dataset:
#   cifar10  (default)  PreResNet-20, one SNL block
#   cifar100            PreResNet-56, one SNL block
#   imagenet            ResNet-50,    one SNL block
#   all                 the three, ImageNet first as in the reference script
#
# Usage: sh train_snl.sh [cifar10|cifar100|imagenet|all] [more train_val.py flags ...]
#   DATA_ROOT=/data sh train_snl.sh cifar100
#   sh train_snl.sh cifar10 --dataset fake --epochs 1 --output-dir /tmp/smoke   (smoke run, no data needed)
#   LAUNCH="torchrun --standalone --nproc_per_node 8" sh train_snl.sh imagenet  (several GPUs)
#   DRY_RUN=1 sh train_snl.sh all                                             (print the commands only)
# Flags after the experiment name are appended, so they override the ones below (argparse: last one wins).
set -eu
cd "$(dirname "$0")"
DATA_ROOT=${DATA_ROOT:-./data}
LAUNCH=${LAUNCH:-python3}

experiment=cifar10
case "${1:-}" in
    cifar10|cifar100|imagenet|all) experiment=$1; shift ;;
    -*|"") ;;
    *) echo "train_snl.sh: unknown experiment '$1' (cifar10, cifar100, imagenet or all)" >&2; exit 2 ;;
esac

run() {
    if [ -n "${DRY_RUN:-}" ]; then
        echo "$LAUNCH train_val.py $*"
    else
        # LAUNCH is unquoted on purpose: "torchrun --nproc_per_node 8" is a command plus its flags.
        $LAUNCH train_val.py "$@"
    fi
}

# --is_norm --is_sys: the normalized symmetric affinity that SNL is defined with.
snl() {
    run --pretrained False --data_dir "$DATA_ROOT" --nl-type snl --nl-nums 1 --checkpoints snl \
        --is_norm --is_sys "$@"
}

imagenet() { snl --dataset imagenet --backbone resnet --arch 50 "$@"; }
cifar100() { snl --dataset cifar100 --backbone preresnet --arch 56 "$@"; }
cifar10() { snl --dataset cifar10 --backbone preresnet --arch 20 "$@"; }

case $experiment in
    all) imagenet "$@"; cifar100 "$@"; cifar10 "$@" ;;
    *) "$experiment" "$@" ;;
esac

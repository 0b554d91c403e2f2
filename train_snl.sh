#!/bin/sh
# The reference's SNL experiments (train_snl.sh of the SNL release), one per dataset:
#   cifar10  (default)  PreResNet-20, one SNL block
#   cifar100            PreResNet-56, one SNL block
#   imagenet            ResNet-50,    one SNL block
#   all                 the three, ImageNet first as in the reference script
#   cityscapes          semantic segmentation: ResNet-50 FCN head with an SNL block (train_seg.py)
#   ucf101              action recognition: ResNet-50 3-D, one SNL block (train_video.py); fine-tuned from the
#                       Kinetics checkpoint PRETRAINED=PATH (e.g. resnet-50-kinetics.pth), from scratch without it
#   kinetics            action recognition: ResNet-50 3-D, one SNL block, trained on Kinetics (train_video.py)
#   market1501          person re-ID: ResNet-50 (ImageNet weights) with five SNL blocks at AGW's places, BoT's
#                       recipe (train_reid.py; docs/reid.md)
#   mars                video person re-ID: the same network over clips of 4 frames, Gao & Nevatia's batch and lr
#   coco                instance segmentation: torchvision's COCO Mask R-CNN R50-FPN with one SNL block, fine-tuned
#                       on COCO 2017 in DATA_ROOT (annotations/, train2017/, val2017/; train_det.py)
#   blocks-cifar10      the reference's block comparison (its train_all_CIFAR10.sh): PreResNet-20 on CIFAR-10 with
#                       one block of each type (a2 nl snl ns cgnl dnl) in stage 1, in save_model/cifar10/20/<block>
#   blocks-cifar100     the same on CIFAR-100 with PreResNet-56 (its train_all_CIFAR100.sh; snl trained last)
#
# Usage: sh train_snl.sh [cifar10|cifar100|imagenet|all|cityscapes|ucf101|kinetics|market1501|mars|coco|
#        blocks-cifar10|blocks-cifar100]
#        [more flags ...]
#   DATA_ROOT=/data sh train_snl.sh cifar100
#   sh train_snl.sh cifar10 --dataset fake --epochs 1 --output-dir /tmp/smoke   (smoke run, no data needed)
#   LAUNCH="torchrun --standalone --nproc_per_node 8" sh train_snl.sh imagenet  (several GPUs)
#   SEEDS="67 68 69" sh train_snl.sh cifar10       (three runs: save_model/cifar10/20/snl_seed67, ...)
#   DRY_RUN=1 sh train_snl.sh all                  (print the commands only; DRY_RUN=0 or unset runs them)
# Flags after the experiment name are appended, so they override the ones below (argparse: last one wins).
# At the end the classification runs made are compared in one table (tools/compare_runs.py).
set -eu
# Relative paths given by the caller (DATA_ROOT, --output-dir, --data_dir) are the caller's, not the repository's.
CALLER_DIR=$(pwd)
absolute() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$CALLER_DIR/$1" ;;
    esac
}
if [ -n "${DATA_ROOT:-}" ]; then DATA_ROOT=$(absolute "$DATA_ROOT"); fi
cd "$(dirname "$0")"
DATA_ROOT=${DATA_ROOT:-./data}
. ./tools/seeded_runs.sh

experiment=cifar10
case "${1:-}" in
    cifar10|cifar100|imagenet|all|cityscapes|ucf101|kinetics|market1501|mars|coco|blocks-cifar10|blocks-cifar100)
        experiment=$1; shift ;;
    -*|"") ;;
    *) echo "train_snl.sh: unknown experiment '$1' (cifar10 cifar100 imagenet all cityscapes ucf101 kinetics" \
            "market1501 mars coco blocks-cifar10 blocks-cifar100)" >&2
       exit 2 ;;
esac

# The flags' folder values made absolute (each argument is taken from the front and appended at the back).
path_flag=
for arg in "$@"; do
    shift
    if [ -n "$path_flag" ]; then
        arg=$(absolute "$arg")
        path_flag=
    else
        case $arg in
            --output-dir | --output_dir | --data_dir | --data-dir) path_flag=1 ;;
            --output-dir=* | --output_dir=* | --data_dir=* | --data-dir=*) arg="${arg%%=*}=$(absolute "${arg#*=}")" ;;
        esac
    fi
    set -- "$@" "$arg"
done

# --is_norm --is_sys: the normalized symmetric affinity that SNL is defined with.
snl() {
    train --pretrained False --data_dir "$DATA_ROOT" --nl-type snl --nl-nums 1 --checkpoints snl \
        --is_norm --is_sys "$@"
}

imagenet() { snl --dataset imagenet --backbone resnet --arch 50 "$@"; }
cifar100() { snl --dataset cifar100 --backbone preresnet --arch 56 "$@"; }
cifar10() { snl --dataset cifar10 --backbone preresnet --arch 20 "$@"; }

# Segmentation writes mIoU, not top-1: it is not part of the comparison table.
cityscapes() {
    seeded launch train_seg.py --dataset cityscapes --data_dir "$DATA_ROOT" --backbone resnet --arch 50 --nl-type snl \
        --checkpoints snl "$@"
}

# Video writes clip and video top-1 (train_video.py, docs/video.md): not part of the comparison table either.
video() {
    seeded launch train_video.py --data_dir "$DATA_ROOT" --backbone resnet3d --arch 50 --nl-type snl --nl-nums 1 \
        --is_norm --is_sys --checkpoints snl "$@"
}
# The 3D-ResNets Kinetics checkpoints of 2017 (resnet-50-kinetics.pth) expect ActivityNet mean subtraction.
ucf101() { video --dataset ucf101 ${PRETRAINED:+--normalization activitynet} --pretrained "${PRETRAINED:-False}" "$@"; }
kinetics() { video --dataset kinetics --pretrained False "$@"; }

# Re-ID writes rank-1 / mAP (train_reid.py, docs/reid.md); the recipe (BoT; video: Gao & Nevatia) fills the rest.
reid() {
    seeded launch train_reid.py --data-dir "$DATA_ROOT" --backbone resnet --arch 50 --nl-type snl --nl-nums 5 \
        --is_norm --is_sys --checkpoints snl "$@"
}
market1501() { reid --dataset market1501 "$@"; }
mars() { reid --dataset mars "$@"; }

# Detection writes COCO box and mask AP (train_det.py, docs/detection.md); torchvision's COCO weights are downloaded.
coco() {
    seeded launch train_det.py --dataset coco --data-dir "$DATA_ROOT" --model maskrcnn --backbone resnet --arch 50 \
        --nl-type snl --nl-nums 1 --is_norm --is_sys --pretrained True --checkpoints snl "$@"
}

# blocks DATASET ARCH "BLOCKS" ARGS...: the block comparison. As in the reference's scripts only snl gets --is_norm
# --is_sys; the other blocks use their own default affinity. (The reference code ignored those flags for PreResNet
# and built every block normalized + symmetric: append --is_norm --is_sys to reproduce its numbers.)
blocks() {
    dataset=$1 arch=$2 order=$3
    shift 3
    for block in $order; do
        if [ "$block" = snl ]; then switches="--is_norm --is_sys"; else switches=; fi
        # shellcheck disable=SC2086  # $switches: no flag or two
        train --pretrained False --dataset "$dataset" --backbone preresnet --arch "$arch" --data_dir "$DATA_ROOT" \
            --nl-type "$block" --nl-nums 1 --checkpoints "$block" $switches "$@"
    done
}

case $experiment in
    all) imagenet "$@"; cifar100 "$@"; cifar10 "$@" ;;
    blocks-cifar10) blocks cifar10 20 "a2 nl snl ns cgnl dnl" "$@" ;;
    blocks-cifar100) blocks cifar100 56 "a2 nl ns cgnl dnl snl" "$@" ;;
    *) "$experiment" "$@" ;;
esac
compare_runs

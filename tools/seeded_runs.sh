# The run helpers of train_snl.sh (POSIX sh; sourced, not run).
#
#   DRY_RUN   empty or 0: run the commands; any other value: only print them
#   LAUNCH    what runs the entry point (default python3; e.g. "torchrun --standalone --nproc_per_node 8")
#   PYTHON    what runs tools/compare_runs.py at the end (default python3)
#   SEEDS     e.g. "67 68 69": each experiment once per seed, with --seed S --checkpoints <name>_seed<S> (appended
#             last, so they win over the flags given); unset: one run, the reference's folder name
LAUNCH=${LAUNCH:-python3}
PYTHON=${PYTHON:-python3}
RUN_DIRS=

dry_run() {
    case ${DRY_RUN:-0} in
        0 | "") return 1 ;;
        *) return 0 ;;
    esac
}

# last_value DEFAULT NAME ALIAS ARGS...: the value of flag NAME (or ALIAS) in ARGS; the last one given wins, as in
# argparse. (--config files are not read: give these flags on the command line.)
last_value() {
    _value=$1 _name=$2 _alias=$3
    shift 3
    while [ $# -gt 0 ]; do
        case $1 in
            "$_name" | "$_alias") if [ $# -gt 1 ]; then _value=$2; shift; fi ;;
            "$_name"=* | "$_alias"=*) _value=${1#*=} ;;
        esac
        shift
    done
    printf '%s\n' "$_value"
}

# launch ENTRY_POINT ARGS...: run (or print) one command.
launch() {
    if dry_run; then
        echo "$LAUNCH $*"
    else
        # LAUNCH is unquoted on purpose: "torchrun --nproc_per_node 8" is a command plus its flags.
        $LAUNCH "$@"
    fi
}

# seeded COMMAND ARGS...: COMMAND ARGS once, or once per seed of SEEDS with --seed S --checkpoints <name>_seed<S>.
seeded() {
    _command=$1
    shift
    if [ -z "${SEEDS:-}" ]; then
        "$_command" "$@"
        return
    fi
    _base=$(last_value snl --checkpoints --checkpoints "$@")
    for _seed in $SEEDS; do
        "$_command" "$@" --seed "$_seed" --checkpoints "${_base}_seed$_seed"
    done
}

# train ARGS...: train_val.py runs (seeded); each run folder is remembered for the table at the end.
train() { seeded _train_one "$@"; }

_train_one() {
    _folder="$(last_value save_model --output-dir --output_dir "$@")/$(last_value imagenet --dataset --dataset "$@")"
    _folder="$_folder/$(last_value '' --arch --arch "$@")/$(last_value snl --checkpoints --checkpoints "$@")"
    RUN_DIRS="$RUN_DIRS$_folder
"
    launch train_val.py "$@"
}

# compare_runs: the comparison table (tools/compare_runs.py) of the runs made by this script.
compare_runs() {
    [ -n "$RUN_DIRS" ] || return 0
    _ifs=$IFS
    IFS='
'
    set -f
    # shellcheck disable=SC2086  # split on newlines only: one argument per run folder
    set -- $RUN_DIRS
    set +f
    IFS=$_ifs
    if dry_run; then
        # on stderr: stdout lists exactly the training commands, one per line, for other tools to read
        echo "$PYTHON tools/compare_runs.py $*" >&2
    else
        echo "=> comparison of the runs above:"
        $PYTHON tools/compare_runs.py "$@" || echo "note: the comparison table failed (the runs are unaffected)" >&2
    fi
}

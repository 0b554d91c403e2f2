"""The run machinery of the entry points: ONE lifecycle shared by every task, and one small module per task.

Lifecycle (this folder): lifecycle (main, train: the sequence), run_state (run folder, model arguments and their
check, resume source, BestTracker, checkpoint write, resumed progress), run_files (checkpoint names per step unit:
EpochFiles, IterationFiles), epochs / iterations (the two step loops), run_context (Run, finish_step), cli
(add_run_flags, add_step_schedule_flags, value parsers), checks (shared recipe checks), config (--config),
checkpoint, device_rng, resume_check, errors, preemption, run_lock, logger, metrics, evaluation, runtime, distributed,
sync_bn, amp_support. Task packages: classification/ (train_val.py), segmentation/ (train_seg.py), video/
(train_video.py), reid/ (train_reid.py), detection/ (train_det.py).

How to add a task (e.g. reid, detection); the entry module itself is the task object lifecycle.main receives:
1. lib/engine/<task>/cli.py: get_args_parser() = OneLineParser + the task's own flag groups + add_run_flags(parser,
   print_freq=N, steps="per-epoch"|"iteration", checkpoints=default, model_dir="<backbone><arch>");
   parse_<task>_args(argv) = config.parse_flags(argv, get_args_parser). lib/engine/<task>/recipe.py:
   resolve_<task>_args(args) fills unset flags (checks.fill), checks them (checks.check, one line naming the
   flag), sets args.task = "<task>" and args.resolved = True. Add "<task>": "train_<task>.py" to models/tasks.py TASKS.
2. train_<task>.py at the top (torchvision style: build_criterion, train_one_epoch or train_iterations, evaluate,
   validate_checkpoint, main, cli_main), ending with
       def main(args): return lifecycle.main(sys.modules[__name__], args, LAUNCHER_PID)
       cli_main = partial(run_cli, main, parse_<task>_args, "train_<task>.py")
3. The module's names that lifecycle.main / train call, in this order:
   resolve(args) -> resolved args (recipe + valid_dataset_from_checkpoint(args, TASK)); check_model(args)
   (run_state.check_model_flags(builder, run_state.model_kwargs(args, n, **extra)): bad flags fail before data);
   validate_checkpoint(args, ctx, log) for --valid (models.checkpoints.rebuild_model rebuilds the checkpoint's model);
   optional args_for_checkpoint(args, checkpoint, path, log) (a resume: adjust args to the loaded checkpoint);
   TASK ("<task>"); STEP_FILES (run_files.EpochFiles or IterationFiles: the step unit); TOTAL_FLAG ("epochs" or
   "iters"); RESUMABLE_SETTINGS (resume_check.RESUMABLE, | EPOCH_BASED for epoch tasks, | what else a resume may
   change); task_run_folder(args) (run_state.run_folder);
   load_data(args, ctx) -> dict (epoch tasks: epochs.epoch_data, with "train_sampler"); create_model(args, data,
   pretrained) -> model with .build_args; load_weights(model, state_dict); prepare_model(model, args, ctx, log)
   -> (model, train_model, eval_model) (runtime.prepare_model); lr_schedule(args, ctx) (.lr_at(step),
   .state_dict()); create_optimizer(model, args, lr); tracker(args) -> run_state.BestTracker(metrics, unit) of
   run_state.Tracked metrics (the first picks model_best.pth.tar); log_setup(args, ctx, data, model, schedule,
   log); build_criterion(args) -> run.criterion.
   Epoch unit (epochs.run_epochs): train_epoch(run, epoch, lr, progress, save) -> {"loss", "top1", ...} (save:
   a mid-epoch checkpoint; progress: where a resumed epoch stopped, else None); evaluation every --eval-freq.
   Iteration unit (iterations.run_iterations): train_batches(run) -> iterator from run.start; train_steps(run,
   batches, start, stop, progress, save) -> mean loss; evaluation every --eval-every and after --iters.
   After a step (run_context.finish_step): evaluate_run(run, finished) -> stats; selects(args) -> whether the
   best is chosen on them; best_line(best) -> log line; record(stats, record) -> (metrics.jsonl fields,
   [(tensorboard tag, value)]); at the end summary(best, args) -> the closing line.
   run (run_context.Run): args, ctx, log, guard, data, model, train_model, eval_model, criterion, optimizer,
   scaler, schedule, best, metrics, writer, checkpoint, start, resumed_inside; run.save(finished, ...).
4. Tests beside the others (tests/runs.py helpers); tests/test_layering.py keeps the import direction.

Nothing here is needed to use the blocks themselves (`lib.build_nonlocal`); models never import lib.engine."""

"""The run machinery of the entry points: ONE lifecycle shared by every task, and one small module per task.

Lifecycle (this folder): lifecycle.train (the sequence), run_state (run folder, model arguments and their check,
resume source, BestTracker, checkpoint write, resumed progress), run_files (checkpoint names per step unit:
EpochFiles, IterationFiles), epochs / iterations (the two step loops), run_context (Run, finish_step), cli
(add_run_flags and value parsers), checks (shared recipe checks), config (--config), checkpoint, resume_check,
tasks, errors, preemption, run_lock, logger, metrics, evaluation, runtime (main(), exit codes), distributed, sync_bn.
Tasks: classification/ (train_val.py), segmentation/ (train_seg.py), video/ (train_video.py).

How to add a task (e.g. reid, detection):
1. lib/engine/<task>/cli.py: get_args_parser() = OneLineParser + the task's own flag groups + add_run_flags(parser,
   print_freq=N, steps=..., checkpoints=..., model_dir=...); parse_<task>_args(argv) = config.parse_flags(argv,
   get_args_parser). lib/engine/<task>/recipe.py: resolve_<task>_args(args) fills unset flags (checks.fill), checks
   its flags (checks.check with a one-line "--flag ..." message), sets args.task = "<task>", args.resolved = True.
   Add "<task>": "train_<task>.py" to tasks.TASKS.
2. train_<task>.py (top level): get_args_parser, build_criterion(args), train_one_epoch / train_iterations,
   evaluate, validate_checkpoint(args, ctx, log) for --valid, main(args) = run_main(resolve(args), LAUNCHER_PID,
   check_model, validate_checkpoint, lambda args, ctx, log: lifecycle.train(TASK, args, ctx, log)) where
   check_model(args) = run_state.check_model_flags(builder, run_state.model_kwargs(args, n, **extra)); cli_main.
3. TASK: a class (or object) with these members, which lifecycle.train calls in this order:
   name ("<task>", as in tasks.TASKS); Files (run_files.EpochFiles or IterationFiles: the step unit);
   total_flag ("epochs" or "iters": the args attribute counting steps); resumable (resume_check.RESUMABLE |
   what else a resume may change; EPOCH_BASED for epoch tasks); run_folder(args) -> path (run_state.run_folder);
   load_data(args, ctx) -> data dict (epoch tasks: "train_sampler" with set_epoch(epoch, skip=n));
   build_model(args, data, pretrained) -> model with .build_args; load_weights(model, state_dict);
   prepare_model(model, args, ctx, log) -> (model, train_model, eval_model) (runtime.prepare_model);
   schedule(args, ctx) -> .lr_at(step), .state_dict(); optimizer(model, args, lr); tracker(args) -> a
   run_state.BestTracker of the task's Tracked metrics (the first picks model_best.pth.tar; unit = Files.unit);
   log_setup(args, ctx, data, model, schedule, log); build_criterion(args) -> run.criterion;
   epoch unit: train_one_epoch(run, epoch, lr, progress, save) -> {"loss", "top1", ...} (run_epochs passes save
   for mid-epoch checkpoints; progress: where a resumed epoch stopped, else None);
   iteration unit: train_batches(run) -> iterator starting at run.start; train_iterations(run, batches, start,
   stop, progress, save) -> mean loss (evaluation every --eval-every iterations and after the last);
   evaluate(run, finished) -> stats dict; selects(args) -> whether the best is chosen on these stats;
   best_line(best) -> log line; record(stats, record) -> (metrics.jsonl fields, [(tensorboard tag, value)]);
   summary(best, args) -> the closing line.
   run (run_context.Run) holds args, ctx, log, guard, data, model, train_model, eval_model, criterion, optimizer,
   scaler, schedule, best, metrics, writer, checkpoint, start, resumed_inside; run.save(finished, ...) checkpoints.
4. Tests: tests/test_<task>.py with tests/runs.py helpers; tests/test_layering.py keeps the import direction.

Nothing here is needed to use the blocks themselves (`lib.build_nonlocal`); models never import lib.engine."""

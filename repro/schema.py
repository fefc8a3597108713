"""Every name shared between the writer (training/MLflow) and the readers (analysis, report).

One module, imported on both sides, so that a renamed param cannot silently break analysis.
MLflow params are the dotted flattening of :class:`repro.config.RunSpec`
(:func:`repro.config.flatten`); the analysis DataFrame uses the same dotted names as columns.
"""

from __future__ import annotations

# --- params (dotted names of RunSpec fields; see repro.config.flatten) -----------------------
P_ARM = "arm"
P_MODEL = "model"
P_N_TRAIN = "n_train"
P_LR = "lr"
P_EPOCHS = "epochs"
P_BATCH_SIZE = "batch_size"
P_SEED = "seed"
P_LAYOUT = "layout"
P_INIT_FROM = "init_from"
P_EVAL_EVERY = "eval_every"
P_DATA_PDE = "data.pde"
P_DATA_LOW = "data.low"
P_DATA_HIGH = "data.high"
P_DATA_RESOLUTION = "data.resolution"
P_DATA_N_TRAIN = "data.n_train"
P_DATA_N_VAL = "data.n_val"
P_DATA_N_TEST = "data.n_test"
P_DATA_SEED = "data.seed"
P_DATA_STREAM = "data.stream"  # the dataset's random stream (repro.config.STREAMS)
P_DATA_PSI_TARGETING = "data.psi_targeting"  # SYS-2 lambda choice (repro.config.PSI_TARGETINGS)
# Derived params logged beside the spec.
P_WIDTH = "model.width"
P_N_MODES = "model.n_modes"
P_IN_CHANNELS = "model.in_channels"
P_UPSTREAM_PDE = "upstream.pde"  # physics of the pre-trained model (transfer / zero_shot)
P_UPSTREAM_LOW = "upstream.low"
P_UPSTREAM_HIGH = "upstream.high"
P_FAST = "fast"  # a truncated-DFT path (fast or fused) rather than the plain rfft2 reference
P_SPECTRAL = "spectral"  # the Fourier-layer implementation run (repro.models.SPECTRAL_PATHS)
P_PRECISION = "precision"  # forward precision: "fp32" (default) or "bf16" (explicit; repro.models.fno.PRECISIONS)

# --- metrics -----------------------------------------------------------------------------------
M_TRAIN_LOSS = "train/loss"  # per epoch, mean over batches of sum-over-pixels squared error
M_VAL_REL_L2 = "val/rel_l2"  # per evaluated epoch
M_LR = "lr_scheduled"  # per epoch, the learning rate in effect (cosine); the param "lr" is its peak
M_TEST_REL_L2 = "test/rel_l2"  # final: mean per-sample relative L2 of the best checkpoint
M_BEST_VAL_REL_L2 = "best/val_rel_l2"
M_BEST_EPOCH = "best_epoch"
M_WALL_SECONDS = "wall_seconds"
M_SAMPLES_PER_SECOND = "samples_per_second"
M_GPU_SECONDS = "gpu_seconds"
M_N_PARAMS = "n_params"
M_COMPILED = "compiled"  # 1.0: forward and update ran through torch.compile throughout (0: either fell back; repro.compilation)
# Convergence of a trained run (repro.train.loop.convergence); absent for zero-shot runs.
M_LATE_IMPROVEMENT = "convergence/late_improvement"  # relative gain of best val over the last fifth
M_CONVERGED = "convergence/converged"  # 1.0 if late_improvement <= loop.CONVERGENCE_THRESHOLD, else 0.0
# Compute per run (per member of an ensemble), for compute-fair comparisons of the arms.
M_SAMPLE_STEPS = "compute/sample_steps"  # training samples processed: sum over steps of the batch size
M_FLOPS = "compute/flops"  # analytic: 3 x forward FLOPs x sample_steps + validation forward passes
M_PRETRAIN_FLOPS = "compute/pretrain_flops"  # transfer / zero_shot: compute/flops of the init_from run

# --- tags --------------------------------------------------------------------------------------
T_RUN_KEY = "run_key"
T_GRID = "grid"
T_ROLE = "role"  # one of the ROLE_* values below
ROLE_PRETRAIN = "pretrain"  # a run other runs start from (init_from)
ROLE_DOWNSTREAM = "downstream"  # every other child run
# A run of a budget-audit block (repro.grid.spec.Experiment.budget_audit): a curve point's run trained
# again with a multiple of the fine-tuning budget, to test that the grid's budget converged; never a
# curve point itself (analysis.audit pairs it with the run it audits).
ROLE_AUDIT = "audit"
ROLE_GRID = "grid"  # the parent run of one grid invocation
T_GIT_SHA = "git_sha"
T_GIT_DIRTY = "git_dirty"
T_DEVICE = "device"
T_FAILURE_REASON = "failure_reason"
T_CONVERGENCE_REASON = "convergence_reason"  # why convergence/late_improvement is NaN, when it is
T_DATA_HASH_PREFIX = "data_hash."  # + split
T_VERSION_PREFIX = "version."  # + package
T_PARENT_RUN_ID = "mlflow.parentRunId"
T_SHIFT = "shift"  # "<upstream label> -> <downstream label>" for transfer / zero_shot
#: A fresh uuid per create_run request: finds the run a request retried after its answer was lost
#: created twice (tracking.create_run_once).
T_CREATE_TOKEN = "create_token"
# Liveness of grid runs (repro.grid): who owns a RUNNING run and when it last said so.
T_GRID_WORKER = "grid.worker"  # host:pid:start of the worker process training the run
T_GRID_LAUNCHER = "grid.launcher"  # host:pid:start of the launcher (on the parent run)
T_GRID_HEARTBEAT = "grid.heartbeat"  # unix time of the owner's last beat
T_GRID_EXECUTOR = "grid.executor"  # local | slurm
T_GRID_PLAN = "grid.plan"  # on the parent run: hash of the plan's sorted run_keys (which grid, not just its label)

# --- artifacts ---------------------------------------------------------------------------------
A_CHECKPOINT = "checkpoint/model.pt"
A_PREDICTIONS = "predictions.png"

# --- MLflow layout -------------------------------------------------------------------------------
EXPERIMENT = "repro"
ENV_TRACKING_URI = "REPRO_TRACKING_URI"
ENV_HOME = "REPRO_HOME"
ENV_DEBUG = "REPRO_DEBUG"  # set (or --debug): the CLI shows tracebacks and MLflow's own error logs
DEFAULT_HOME = ".repro"  # relative to the current directory unless REPRO_HOME is set

# --- run states (MLflow RunStatus names) ---------------------------------------------------------
FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
RUNNING = "RUNNING"
#: Not an MLflow state but a run outcome: another live process holds this run_key's claim (it
#: trains it, or has just finished it), so this process did not train it (repro.grid.store.claim).
ELSEWHERE = "ELSEWHERE"

# --- analysis DataFrame columns (besides the dotted params above) --------------------------------
C_RUN_ID = "run_id"
C_STATUS = "status"
C_START_TIME = "start_time"
C_TASK = "task"  # downstream dataset label, e.g. "poisson(5,10)"
C_UPSTREAM = "upstream"  # pre-training dataset label, "" for scratch
C_SHIFT = T_SHIFT
C_RUN_KEY = T_RUN_KEY
C_GRID = T_GRID
C_ROLE = T_ROLE
C_FAILURE_REASON = T_FAILURE_REASON
C_CONVERGENCE_REASON = T_CONVERGENCE_REASON
C_GIT_SHA = T_GIT_SHA
C_TEST_REL_L2 = M_TEST_REL_L2
C_VAL_REL_L2 = M_BEST_VAL_REL_L2
C_PARENT_RUN_ID = "parent_run_id"  # MLflow id of the grid's parent run

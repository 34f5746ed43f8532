# XLA settings for NVIDIA GPUs, in one place; sourced by the GPU launchers and benchmarks.
# Keeps anything already in XLA_FLAGS; every setting can be overridden from the environment.
# Overlap collectives (data-parallel all-reduce, FSDP all-gathers) with compute.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
# Let XLA take most GPU memory up front (large clips need it); the rest stays for cuDNN.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

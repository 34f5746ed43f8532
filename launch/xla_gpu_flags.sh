# XLA settings for NVIDIA GPUs, in one place; sourced by the GPU launchers and benchmarks.
# Defaults only: a flag already in XLA_FLAGS (the same name, any value) is left as it is, and
# sourcing this twice adds nothing twice.
_auvmae_default_flag() {  # NAME=VALUE, added unless NAME is set already
  case " ${XLA_FLAGS:-} " in *" ${1%%=*}="*) ;; *) export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$1";; esac
}
# Overlap collectives (data-parallel all-reduce, FSDP all-gathers) with compute.
_auvmae_default_flag --xla_gpu_enable_latency_hiding_scheduler=true
unset -f _auvmae_default_flag
# Let XLA take most GPU memory up front (large clips need it); the rest stays for cuDNN.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

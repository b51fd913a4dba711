"""Training-technique planner: memory, time and a recommended plan, reasoned on config numbers only.

Example::
    from lit_llm.planning import PlanRequest, make_plan, resolve_hardware, resolve_model

    report = make_plan(PlanRequest(resolve_model("gpt2-xl"), "clm", 1024, 512, resolve_hardware("A100-80GB"),
                                   devices=8, tokens=10**10))
    print(report.best.choice.label, report.reasons)
"""

from lit_llm.planning.choice import ADAPTERS, PRECISIONS, STRATEGIES, PlanChoice
from lit_llm.planning.cpu import CpuInfo, cpu_hardware, cpu_peaks, measure_matmul_tflops, parse_cpuinfo, read_cpuinfo
from lit_llm.planning.emit import emit_config, plan_config
from lit_llm.planning.memory import MemoryEstimate, accelerate_estimate, activation_bytes, estimate_memory
from lit_llm.planning.params import (
    TASKS,
    count_parameters,
    lora_parameters,
    matmul_parameters,
    parameter_tensors,
)
from lit_llm.planning.plan import Candidate, NothingFitsError, PlanReport, PlanRequest, evaluate_candidates, make_plan
from lit_llm.planning.presets import (
    HARDWARE_PRESETS,
    MODEL_PRESETS,
    HardwareSpec,
    ModelDims,
    dims_from_hf_config,
    hardware_for_device,
    resolve_hardware,
    resolve_model,
)
from lit_llm.planning.throughput import StepTime, estimate_step_time, flops_per_token

__all__ = [
    "ADAPTERS", "CpuInfo", "cpu_hardware", "cpu_peaks", "measure_matmul_tflops", "parse_cpuinfo", "read_cpuinfo",
    "lora_parameters", "hardware_for_device",
    "PRECISIONS", "STRATEGIES", "TASKS", "PlanChoice", "emit_config", "plan_config", "MemoryEstimate",
    "accelerate_estimate", "activation_bytes", "estimate_memory", "count_parameters", "matmul_parameters",
    "parameter_tensors", "Candidate", "NothingFitsError", "PlanReport", "PlanRequest", "evaluate_candidates",
    "make_plan", "HARDWARE_PRESETS", "MODEL_PRESETS", "HardwareSpec", "ModelDims", "dims_from_hf_config",
    "resolve_hardware", "resolve_model", "StepTime", "estimate_step_time", "flops_per_token",
]

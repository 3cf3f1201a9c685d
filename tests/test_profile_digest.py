"""The profile summary's digest: busy time, launches, syncs, loading, and the device's idle time."""


def test_step_digest_sums_device_time_launches_syncs_and_loading_per_step():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from sld.profile_digest import step_digest

    def event(key, count, device=DeviceType.CPU, device_us=0.0, cpu_us=0.0, annotation=False):
        return SimpleNamespace(
            key=key,
            count=count,
            device_type=device,
            self_device_time_total=device_us,
            cpu_time_total=cpu_us,
            is_user_annotation=annotation,
        )

    events = [
        event("aten::mm", 40, device_us=0.0, cpu_us=900.0),  # a CPU op: its kernels are the CUDA rows
        event("ampere_sgemm", 40, DeviceType.CUDA, device_us=30_000.0),
        event("void elementwise_kernel", 60, DeviceType.CUDA, device_us=10_000.0),
        # CUPTI's record of the host blocked on a full launch queue: a host event whose CUDA column is
        # the time of the kernels launched meanwhile, already counted in their own rows
        event("Command Buffer Full", 10, DeviceType.CPU, device_us=8_000.0, cpu_us=20_000.0),
        # a record_function range on the device's timeline spans kernels already counted
        event("sld.loss_fn", 2, DeviceType.CUDA, device_us=35_000.0, annotation=True),
        event("cudaLaunchKernel", 80, cpu_us=400.0),
        event("cuLaunchKernelEx", 20, cpu_us=100.0),
        event("cudaStreamSynchronize", 6, cpu_us=12_000.0),
        event("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 2, cpu_us=4_000.0),
    ]
    lines = step_digest(events, steps=2, wall_ms_per_step=40.0)
    assert lines[0] == "Per step: 40.0 ms of wall time with the profiler on"
    assert lines[1].startswith("  device busy 20.0 ms (50% of the wall time") and lines[1].endswith(
        ", 50 kernel launches"
    )
    assert lines[2] == "  host syncs: 3.0 a step, 6.0 ms waiting (cudaStreamSynchronize x6)"
    assert lines[3] == "  data loading (next batch): 2.0 ms"
    assert lines[4] == "  named ranges on the device, ms a step: sld.loss_fn 17.5"


def test_device_idle_charges_each_gap_to_the_host_phase_it_falls_in():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from sld.profile_digest import device_idle

    def event(name, start_ms, end_ms, device=DeviceType.CUDA, annotation=False):
        span = SimpleNamespace(start=1000.0 * start_ms, end=1000.0 * end_ms)
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation, time_range=span)

    cpu = DeviceType.CPU
    events = [
        # the device: busy 0-10, 12-20 (two overlapping kernels), 30-40 ms
        event("gemm", 0, 10),
        event("gemm", 12, 18),
        event("elementwise", 16, 20),
        event("gemm", 30, 40),
        # a named range drawn on the device spans kernels, it is none; nor is the host's wait on a full queue
        event("sld.loss_fn", 0, 40, annotation=True),
        event("Command Buffer Full", 20, 30, cpu),
        # the host: the forward until 15 ms, the backward 15-25, the next batch 26-28
        event("sld.loss_fn", 0, 15, cpu, annotation=True),
        event("aten::mm", 1, 2, cpu),
        event("sld.backward", 15, 25, cpu, annotation=True),
        event("enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", 26, 28, cpu),
    ]
    line = device_idle(events, steps=2)
    # gaps 10-12 (forward) and 20-30 (backward 20-25, data 26-28, between 25-26 and 28-30), halved a step
    assert line == (
        "  device idle between kernels: 6.0 ms a step, while the host was in sld.loss_fn 1.0, sld.backward 2.5, "
        "sld.optimizer 0.0, data loading 1.0, between phases 1.5"
    )
    assert device_idle([event("aten::mm", 0, 1, cpu)], steps=1) is None  # no device work: nothing to say


def test_kernel_kinds_split_the_busy_time_by_what_each_kernel_does():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from sld.profile_digest import KINDS_NOTE, kernel_kind, kernel_kinds

    assert kernel_kind("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention)") == "attention"
    assert kernel_kind("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_bias_TNN") == "matrix products"
    assert kernel_kind("triton_tem_fused_addmm_gelu_0") == "matrix products"
    assert kernel_kind("triton_poi_fused_cat_gelu_view_5") == "fused pointwise (Triton)"
    assert kernel_kind("triton_poi_fused__scaled_dot_product_flash_attention_2") == "fused pointwise (Triton)"
    assert kernel_kind("void at::native::CatArrayBatchedCopy<float>") == "copies and fills"
    assert kernel_kind("void at::native::index_elementwise_kernel<scatter_gather_op>") == "elementwise (aten)"
    assert kernel_kind("triton_per_fused__to_copy_add_native_layer_norm_1") == "fused reductions (Triton)"
    assert kernel_kind(
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>"
    ) == ("copies and fills")
    assert kernel_kind("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>") == (
        "elementwise (aten)"
    )
    assert kernel_kind("void multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert kernel_kind("some_new_kernel") == "other"

    def event(key, device_us, device=DeviceType.CUDA, annotation=False):
        return SimpleNamespace(
            key=key, device_type=device, self_device_time_total=device_us, is_user_annotation=annotation
        )

    averages = [
        event("nvjet_sm90_tst_a", 30_000.0),
        event("ampere_bf16_s16816gemm_b", 10_000.0),
        event("triton_poi_fused_gelu_3", 6_000.0),
        event("Memcpy HtoD (Pinned -> Device)", 2_000.0),
        event("sld.loss_fn", 50_000.0, annotation=True),  # a range over kernels counted already
        event("Command Buffer Full", 9_000.0, device=DeviceType.CPU),  # a host event
    ]
    line = kernel_kinds(averages, steps=2)
    assert line == (
        f"  {KINDS_NOTE}: matrix products 20.0, fused pointwise (Triton) 3.0, copies and fills 1.0"
    )
    assert kernel_kinds([event("sld.loss_fn", 5.0, annotation=True)], steps=1) is None

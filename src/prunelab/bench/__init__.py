"""Speed: the analytic roofline (``roofline``), the engine interface (``engines``), dense vs CSR on
the CPU (``cpu_sparse``), dense vs 2:4 GEMMs and end-to-end prefill/decode on a GPU (``gemm``,
``e2e``, ``torch_sparse``), TensorRT-LLM engines (``trtllm``), and the pipeline's benchmark stage
(``stage.bench_stage``)."""

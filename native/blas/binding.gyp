{
  "targets": [
    {
      "target_name": "vaccine_blas",
      "sources": ["blas.c", "cross_entropy.c", "rms_norm.c", "swiglu.c", "lora.c", "attention.c", "block.c", "dropout.c"],
      "cflags": ["-std=c11", "-Wall", "-Wextra", "-ffp-contract=off", "-fno-trapping-math"],
      "libraries": ["-lopenblas", "-lm"]
    }
  ]
}

{
  "targets": [
    {
      "target_name": "vaccine_blas",
      "sources": ["blas.c"],
      "cflags": ["-O2", "-std=c11", "-Wall", "-Wextra", "-ffp-contract=off"],
      "libraries": ["-lopenblas", "-lm"]
    }
  ]
}

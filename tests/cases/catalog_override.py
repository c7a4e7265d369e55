"""A catalog override with one extra instance type (`x9.envtest`, H100 figures), in the shipped tables' format:
the CLI's unit tests and the operator's e2e test both give it through KUBEMOE_CATALOG_PATH."""

EXTRA_INSTANCE = """\
instances:
- name: x9.envtest
  acceleratorKind: gpu
  acceleratorModel: H100-80GB
  devicesPerNode: 8
  memoryPerDeviceMib: 81559
  memoryBandwidthGbps: 3350
  bf16Tflops: 989
  fp8Tflops: 1979
  performanceSource: test override (H100 SXM datasheet figures)
  interconnect: NVSwitch
  efa: false
  networkGbps: 100
  vcpus: 192
  hostMemoryGib: 2048
  pricePerHour: 1.0
  priceSource: test
  resourceName: nvidia.com/gpu
  fp8: true
  source: test override
"""

;; Declares 512 MiB of initial memory: over the default limit at instantiation.
(module
  (memory (export "memory") 8192)
  (func (export "task.run")))

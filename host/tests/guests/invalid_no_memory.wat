;; Exports no memory.
(module
  (func (export "task.run")))

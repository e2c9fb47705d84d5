;; A task export that takes a parameter.
(module
  (memory (export "memory") 1)
  (func (export "task.run") (param i32)))

;; A start function that never returns: limits apply to it too.
(module
  (memory (export "memory") 1)
  (func $start (loop $l (br $l)))
  (start $start)
  (func (export "task.run")))

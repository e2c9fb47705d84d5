;; Imports `wasq.output` with the wrong type.
(module
  (import "wasq" "output" (func $output (param i64)))
  (memory (export "memory") 1)
  (func (export "task.run") (call $output (i64.const 0))))

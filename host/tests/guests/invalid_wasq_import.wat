;; Imports a `wasq` function that does not exist.
(module
  (import "wasq" "read_host_file" (func $f (param i32)))
  (memory (export "memory") 1)
  (func (export "task.run") (call $f (i32.const 0))))

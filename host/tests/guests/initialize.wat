;; A reactor: `_initialize` sets a flag the task reads; spins when asked.
(module
  (import "wasq" "output" (func $output (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\"uninitialized\"")
  (data (i32.const 32) "\"initialized\"")
  (global $ready (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $ready (i32.const 1)))
  (func (export "task.check")
    (if (global.get $ready)
      (then (call $output (i32.const 32) (i32.const 13)))
      (else (call $output (i32.const 0) (i32.const 15))))))

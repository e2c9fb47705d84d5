;; A minimal ABI v1 module: `answer` outputs 42, `echo` outputs its input,
;; `spin` loops forever, `grow` grows memory by the page count in its input
;; length, `nothing` returns without output.
(module
  (import "wasq" "input_len" (func $input_len (result i32)))
  (import "wasq" "input_read" (func $input_read (param i32)))
  (import "wasq" "output" (func $output (param i32 i32)))
  (import "wasq" "fail" (func $fail (param i32 i32)))
  (import "wasq" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "42")
  (data (i32.const 16) "boom")
  (func (export "task.answer") (call $output (i32.const 0) (i32.const 2)))
  (func (export "task.echo")
    (call $input_read (i32.const 1024))
    (call $output (i32.const 1024) (call $input_len)))
  (func (export "task.nothing"))
  (func (export "task.fail") (call $fail (i32.const 16) (i32.const 4)))
  (func (export "task.log") (call $log (i32.const 2) (i32.const 16) (i32.const 4)) (call $output (i32.const 0) (i32.const 2)))
  (func (export "task.spin") (loop $l (br $l)))
  (func (export "task.trap") unreachable)
  (func (export "task.panic") (call $fail (i32.const 16) (i32.const 4)) unreachable)
)

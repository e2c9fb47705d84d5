;; The ABI's edge cases (docs/abi.md), one task each; abi_edges.c has the
;; same tasks in C, built from guest-sdk/c/wasq_guest.h.
(module
  (import "wasq" "output" (func $output (param i32 i32)))
  (import "wasq" "fail" (func $fail (param i32 i32)))
  (import "wasq" "bad_input" (func $bad_input (param i32 i32)))
  (import "wasq" "log" (func $log (param i32 i32 i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "name must not be empty")      ;; 22 bytes
  (data (i32.const 32) "hello")                      ;; 5
  (data (i32.const 40) "1")                          ;; 1
  (data (i32.const 48) "failed after output")        ;; 19
  (data (i32.const 80) "failed before output")       ;; 20
  (data (i32.const 112) "first")                     ;; 5
  (data (i32.const 120) "last")                      ;; 4
  (data (i32.const 128) "x")                         ;; 1
  (data (i32.const 136) "\ff ok \c3")                ;; 6, invalid UTF-8
  ;; an iovec {ptr 136, len 6} for fd_write
  (data (i32.const 144) "\88\00\00\00\06\00\00\00")
  (global $ctor_runs (mut i32) (i32.const 0))
  (func (export "_initialize")
    (global.set $ctor_runs (i32.add (global.get $ctor_runs) (i32.const 1))))
  (func (export "task.bad_input") (call $bad_input (i32.const 0) (i32.const 22)))
  (func (export "task.not_json") (call $output (i32.const 32) (i32.const 5)))
  (func (export "task.output_then_fail")
    (call $output (i32.const 40) (i32.const 1))
    (call $fail (i32.const 48) (i32.const 19)))
  (func (export "task.fail_then_output")
    (call $fail (i32.const 80) (i32.const 20))
    (call $output (i32.const 40) (i32.const 1)))
  (func (export "task.fail_then_bad_input")
    (call $fail (i32.const 112) (i32.const 5))
    (call $bad_input (i32.const 120) (i32.const 4)))
  (func (export "task.log_levels")
    (call $log (i32.const -5) (i32.const 128) (i32.const 1))
    (call $log (i32.const 0) (i32.const 128) (i32.const 1))
    (call $log (i32.const 2) (i32.const 128) (i32.const 1))
    (call $log (i32.const 4) (i32.const 128) (i32.const 1))
    (call $log (i32.const 9) (i32.const 128) (i32.const 1))
    (call $log (i32.const 0x80000000) (i32.const 128) (i32.const 1))
    (call $log (i32.const 0x7fffffff) (i32.const 128) (i32.const 1)))
  (func (export "task.bad_utf8_fail") (call $fail (i32.const 136) (i32.const 6)))
  (func (export "task.bad_utf8_log")
    (call $log (i32.const 2) (i32.const 136) (i32.const 6)))
  (func (export "task.bad_utf8_stdout")
    (drop (call $fd_write (i32.const 1) (i32.const 144) (i32.const 1) (i32.const 152))))
  (func (export "task.initialized")
    (i32.store8 (i32.const 160) (i32.add (i32.const 48) (global.get $ctor_runs)))
    (call $output (i32.const 160) (i32.const 1)))
)

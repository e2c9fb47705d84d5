;; Imports something outside ABI v1: must be refused as invalid_module.
(module
  (import "env" "system" (func $system (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "task.run") (drop (call $system (i32.const 0)))))

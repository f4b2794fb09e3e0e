"""The network: its config (`configs`), its layers (`layers/`), how it is built (`build`),
the precision it computes in (`precision`), its files (`model_io`) and what runs it
(`runtime`: load -> geometry -> precision -> ops)."""

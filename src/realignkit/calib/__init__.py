"""Running a model to collect statistics: Fisher scores, layer-input Hessians."""

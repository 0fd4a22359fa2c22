"""2D deblurring: PSFs and degradation, Wiener and the separable pseudo-inverse kernel (``filters``),
the learned deconvolution CNN of Xu et al. 2014 (``train``), and the stage the CLI runs (``stage``)."""

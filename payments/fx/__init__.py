"""FX: quotes at a locked rate, and the rate source behind them."""

"""Market inputs: hashprice and power price sources, fetched, checked and kept with their age."""

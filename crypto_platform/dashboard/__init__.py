"""The live market page: latest prices from the lake, minute bars, alerts and feed health from the
warehouse and the ingester, served by Streamlit (``crypto-platform dashboard``).

- :mod:`.data`    what each panel shows, read from the lake, the SQL warehouse and the ingester's files
- :mod:`.cached`  the same reads behind ``st.cache_data``, shared by every viewer of a server
- :mod:`.charts`  the minute-bar candlestick (plotly)
- :mod:`.app`     the page layout (the Streamlit script)
- :mod:`.cli`     ``crypto-platform dashboard``
"""

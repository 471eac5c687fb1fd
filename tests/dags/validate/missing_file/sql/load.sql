INSERT INTO t SELECT * FROM staging WHERE day = '{{ ds }}' AND region = '{{ params.region }}';

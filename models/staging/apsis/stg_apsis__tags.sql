-- Tags of each profile as of its latest export.
with

profile_tags as (

    {{ relation_or_empty(source('apsis', 'profile_tags'), {
        'profile_key': dbt.type_string(),
        'section_id': dbt.type_string(),
        'tag_id': dbt.type_string(),
        'export_id': dbt.type_string(),
    }) }}

),

tag_definitions as (

    {{ relation_or_empty(source('apsis', 'tags'), {
        'section_id': dbt.type_string(),
        'tag_id': dbt.type_string(),
        'name': dbt.type_string(),
    }) }}

),

profiles as (

    select * from {{ ref('stg_apsis__profiles') }}

),

final as (

    select
        profile_tags.profile_key,
        profile_tags.section_id,
        profile_tags.tag_id,
        tag_definitions.name as tag_name,
        profiles.last_exported_at as exported_at
    from profile_tags
    inner join profiles
        on profile_tags.profile_key = profiles.profile_key
            and profile_tags.export_id = profiles.latest_export_id
    left join tag_definitions
        on profile_tags.section_id = tag_definitions.section_id
            and profile_tags.tag_id = tag_definitions.tag_id

)

select * from final
